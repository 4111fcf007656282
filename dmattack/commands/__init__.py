"""What the command line runs (docs/architecture.md): the workflows behind its commands, click
plumbing, lazily built options and console output. ``cli.py`` is the click app."""
