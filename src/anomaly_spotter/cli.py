"""What every stage script shares: argument parsing basics and turning errors into exit codes.

A stage's ``main`` raises :class:`~anomaly_spotter.errors.UserError` for anything the user can
fix; :func:`run` prints that message (no traceback) and exits with status 2. Ctrl-C exits
with 130 after a one-line message.

Example (a whole stage script)::

    from anomaly_spotter.cli import run, stage_parser

    def main(argv=None):
        args = stage_parser("Do the thing.").parse_args(argv)
        ...

    if __name__ == "__main__":
        run(main)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from anomaly_spotter.errors import UserError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def stage_parser(description: str, *, category: bool = True) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with ``--params`` and (optionally) a required ``--category``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if category:
        parser.add_argument("--category", required=True, help="category name, as listed in data.categories")
    return parser


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Call ``main(argv)``; exit 2 with the message on a :class:`UserError`, 130 on Ctrl-C."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        sys.exit(130)
