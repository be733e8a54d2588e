"""User-facing errors.

Anything a user can fix (a missing file, a corrupt image, a bad param, a failed download)
raises a subclass of :class:`UserError` with a message that names the file or key and says
what to do. Stage entry points catch ``UserError``, print the message and exit with status 2,
so users see one clear sentence instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class UserError(Exception):
    """An error caused by input the user controls; its message is shown as is."""


class ConfigError(UserError):
    """``params.yaml`` has unknown keys, wrong types or out-of-range values (all listed at once)."""

    def __init__(self, problems: list[str], source: str = "params.yaml") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class DataError(UserError):
    """A dataset on disk is missing, malformed or unreadable (all problems listed at once)."""

    def __init__(self, problems: list[str], root: str = "") -> None:
        self.problems = list(problems)
        where = f" in {root}" if root else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} data problem(s){where}:\n{lines}")


class FetchError(UserError):
    """A download or an archive failed (network, checksum, unsafe or malformed archive)."""


class TrainingError(UserError):
    """Training cannot go on (non-finite loss or gradient, out of memory)."""


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """A hint naming the closest known name (case-insensitive), or ``""`` when none is close.

    >>> did_you_mean("Botle", ("bottle", "cable")), did_you_mean("xyz", ("bottle",))
    (" (did you mean 'bottle'?)", '')
    """
    close = difflib.get_close_matches(str(name).lower(), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
