"""Run folders (docs/architecture.md): checkpoints (``checkpoints``), config.json
(``config``), weight files (``weights``) and diffusers pipelines (``pipeline``)."""
