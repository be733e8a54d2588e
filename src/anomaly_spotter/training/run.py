"""What every fit of the ``train`` stage is given (:class:`FitRun`) and reports back (:class:`FitResult`).

Example:
    >>> run = FitRun(Path("models/weave/model.pt"), Path("checkpoints/weave"), Path("dvclive/train/weave"))
    >>> FitResult(written=True, summary="nothing to learn").details
    {}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FitRun:
    """Where a fit writes."""

    model_path: Path
    checkpoint_dir: Path
    log_dir: Path
    progress: bool = True


@dataclass(frozen=True)
class FitResult:
    """What a fit reports back to the ``train`` stage."""

    written: bool  # False on DDP ranks other than 0, which write nothing
    summary: str  # one line for the stage's output
    details: dict[str, Any] = field(default_factory=dict)
