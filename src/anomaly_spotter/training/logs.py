"""What a gradient run logs: DVCLive metrics per epoch and sample reconstructions.

Only rank 0 writes (other DDP ranks get :class:`NoLogs`). DVCLive is created with
``dvcyaml=False`` (metrics and plots are declared in ``dvc.yaml`` by hand) and
``save_dvc_exp=False`` (no stray experiments from inside a stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_spotter.data import to_uint8


class NoLogs:
    """What non-zero ranks log to: nothing (only rank 0 writes DVCLive files)."""

    def __init__(self) -> None:
        self.step = 0
        self.summary: dict[str, Any] = {}

    def log_metric(self, name: str, value: float) -> None:
        pass

    def log_image(self, name: str, image: np.ndarray) -> None:
        pass

    def end(self) -> None:
        pass


def open_log(log_dir: Path, *, resume: bool, is_main: bool):
    """A DVCLive ``Live`` at ``log_dir`` on rank 0, :class:`NoLogs` elsewhere."""
    if not is_main:
        return NoLogs()
    from dvclive import Live  # deferred: dvclive imports a lot, and only training logs

    return Live(str(log_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)


def log_epoch(live, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float], lr: float) -> None:
    """One epoch's ``train/<term>``, ``val/<term>`` and ``lr`` at step ``epoch + 1``."""
    live.step = epoch + 1
    for name, value in train_stats.items():
        live.log_metric(f"train/{name}", value)
    for name, value in val_stats.items():
        live.log_metric(f"val/{name}", value)
    live.log_metric("lr", lr)


def sample_grid(inputs: torch.Tensor, recons: torch.Tensor) -> np.ndarray:
    """Inputs on the top row, reconstructions below: uint8 (2*S, k*S, 3)."""
    top = np.concatenate(list(to_uint8(inputs)), axis=1)
    bottom = np.concatenate(list(to_uint8(recons)), axis=1)
    return np.concatenate([top, bottom], axis=0)


def quiet(message: str) -> None:
    """Where non-zero ranks print to: nowhere (rank 0 reports for all)."""
