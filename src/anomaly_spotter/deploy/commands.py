"""The ``anomaly-spotter`` console script: the package's entry points under one command.

``anomaly-spotter predict …`` is ``python -m anomaly_spotter.deploy.predict …``,
``anomaly-spotter readme-table …`` rewrites the README's results table and
``anomaly-spotter plots-template …`` writes the offline ``dvc plots`` page template. Each
sub-command takes exactly the arguments of its module (``anomaly-spotter predict --help``).

Example:
    >>> sorted(COMMANDS)
    ['plots-template', 'predict', 'readme-table']
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from anomaly_spotter.cli import run
from anomaly_spotter.deploy import predict
from anomaly_spotter.evaluation import plots_template, readme_table

# sub-command -> (its module's main, one line of help)
COMMANDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "predict": (predict.main, "score new images with a trained category model (verdicts, overlays, JSONL)"),
    "readme-table": (readme_table.main, "rewrite the README's results table from metrics/summary.json"),
    "plots-template": (plots_template.main, "write the offline HTML template for `dvc plots show/diff`"),
}


def usage() -> str:
    lines = ["usage: anomaly-spotter <command> [arguments]", "", "commands:"]
    lines += [f"  {name:<15} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines + ["", "`anomaly-spotter <command> --help` lists a command's arguments."])


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``argv[0]`` to its module's ``main`` with the rest (exit 2 for an unknown command)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    command = COMMANDS[name][0]
    code = 0
    if name == "predict":
        run(command, rest)  # predict's UserErrors become exit 2 with the message, as for python -m
    else:
        code = command(rest) or 0
    sys.exit(code)
