"""Checkpoints of a gradient run: written after every epoch, resumed only when they match.

``checkpoints/<category>/last.pt`` holds the model, optimizer, scheduler, gradient scaler, the
best weights so far and the early-stopping state. It is written atomically, so a run killed at
any moment leaves either the previous epoch's checkpoint or this one's. A checkpoint made with
other params or data (:func:`fingerprint`) is ignored, never half-used.

Example:
    >>> state = RunState.fresh(model)  # doctest: +SKIP
    >>> save_checkpoint(path, "abc", epoch=1, completed=False, model=model, optimizer=opt,
    ...                 scheduler=None, scaler=scaler, state=state)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anomaly_spotter.config import Params, to_dict
from anomaly_spotter.fileio import atomic_open

if TYPE_CHECKING:
    from anomaly_spotter.dataset.processed import ProcessedCategory

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1


def fingerprint(params: Params, data: ProcessedCategory) -> str:
    """Hash of everything that shapes training: a checkpoint is resumed only when it matches."""
    h = hashlib.sha256()
    relevant = {
        k: to_dict(getattr(params, k)) for k in ("preprocess", "augment", "model", "anomalies", "loss", "train")
    }
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for name in ("train.npy", "val.npy", "index.json"):
        h.update(hashlib.md5((data.root / name).read_bytes()).digest())
    return h.hexdigest()


def save_torch(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue())


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (the best weights must not change with the model)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@dataclass
class RunState:
    """Model selection and early stopping across epochs (and across a resume)."""

    best_state: dict[str, torch.Tensor]
    best_val: float = math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    start_epoch: int = 0  # epochs already finished when this run (re)started

    @classmethod
    def fresh(cls, model: torch.nn.Module) -> RunState:
        return cls(best_state=cpu_state(model.state_dict()))

    def record(self, epoch: int, val_loss: float, model: torch.nn.Module) -> bool:
        """Note epoch ``epoch`` (0-based) with ``val_loss``; True when it is the best so far."""
        if val_loss < self.best_val:
            self.best_val, self.best_epoch, self.stale_epochs = val_loss, epoch + 1, 0
            self.best_state = cpu_state(model.state_dict())
            return True
        self.stale_epochs += 1
        return False


def save_checkpoint(
    path: Path,
    fingerprint: str,
    *,
    epoch: int,
    completed: bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    state: RunState,
) -> None:
    """Write the checkpoint after ``epoch`` finished epochs."""
    save_torch(
        path,
        {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "epoch": epoch,  # epochs finished
            "completed": completed,
            "model": cpu_state(model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict(),
            "best_state": state.best_state,
            "best_val": state.best_val,
            "best_epoch": state.best_epoch,
            "stale_epochs": state.stale_epochs,
        },
    )


def try_resume(
    path: Path,
    fingerprint: str,
    device: torch.device,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
) -> tuple[RunState | None, str | None]:
    """Load an unfinished checkpoint made with the same params and data into the given objects.

    Returns the restored :class:`RunState` (None: start fresh) and a message saying what
    happened (None when there was nothing to say).
    """
    if not path.is_file():
        return None, None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a checkpoint we cannot read is only a lost shortcut
        return None, f"ignoring unreadable checkpoint {path} ({exc}); starting fresh"
    if saved.get("format") != FORMAT_VERSION or saved.get("fingerprint") != fingerprint:
        return None, f"checkpoint {path} was made with other params or data; starting fresh"
    if saved.get("completed"):
        return None, None  # a finished run is retrained from scratch (same bytes, full logs)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    state = RunState(
        best_state=saved["best_state"],
        best_val=float(saved["best_val"]),
        best_epoch=int(saved["best_epoch"]),
        stale_epochs=int(saved["stale_epochs"]),
        start_epoch=int(saved["epoch"]),
    )
    return state, f"resuming from {path} after epoch {state.start_epoch}"
