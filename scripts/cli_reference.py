"""Write docs/cli.md from the click app's own help texts: `python scripts/cli_reference.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402


def render() -> str:
    """The CLI reference as Markdown: the group's help, then each command's --help."""
    parts = ["# CLI reference\n",
             "Generated from `dmattack --help` by `scripts/cli_reference.py`; "
             "`tests/test_docs.py` keeps it current.\n"]
    settings = {"terminal_width": 100, "help_option_names": ["-h", "--help"]}
    with click.Context(cli.main, info_name="dmattack", **settings) as ctx:
        parts.append(f"```\n{cli.main.get_help(ctx)}\n```\n")
        parts.append(vocabulary())
        for name, command in sorted(cli.main.commands.items()):
            with click.Context(command, info_name=f"dmattack {name}", **settings) as sub:
                parts.append(f"## dmattack {name}\n\n```\n{command.get_help(sub)}\n```\n")
    return "\n".join(parts)


def vocabulary() -> str:
    """The table of ``cli.VOCABULARY``: one option name per concept, its deprecated spellings."""
    rows = ["## Vocabulary\n",
            "One option name per concept in every command. A deprecated spelling still works "
            "for one release with one warning line on stderr (`warning: OLD is deprecated here; "
            "use NEW`) and records the same settings. Every command refuses, with one `Error:` "
            "line and exit code 2, an option that the chosen method or sampler does not read.\n",
            "| concept | option | commands | deprecated spellings |", "|---|---|---|---|"]
    for concept, option, commands, old in cli.VOCABULARY:
        rows.append(f"| {concept} | `{option}` | {commands} | "
                    f"{', '.join(f'`{o}`' for o in old) or '—'} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(render())
