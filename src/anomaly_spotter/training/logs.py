"""What a gradient run logs: DVCLive metrics per epoch and sample reconstructions.

Only rank 0 writes (other DDP ranks get :class:`NoLogs`). DVCLive is created with
``dvcyaml=False`` (metrics and plots are declared in ``dvc.yaml`` by hand) and
``save_dvc_exp=False`` (no stray experiments from inside a stage).

DVCLive writes one TSV per logged term (``plots/metrics/{train,val}/<term>.tsv``, ``lr.tsv``):
kept as the record, but one chart each is too many to read. :func:`write_loss_curve` joins the
train and validation *total* loss into ``loss_curve.json``, the one training chart of
``dvc plots show`` (template ``.dvc/plots/loss_curve.json``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_spotter.fileio import write_json
from anomaly_spotter.tensors import to_uint8

LOSS_CURVE = "loss_curve.json"
# DVCLive's folder of a metric logged as "<split>/loss", and that split's name on the chart.
LOSS_SPLITS = (("train", "train"), ("val", "validation"))


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


def loss_curve_rows(log_dir: Path, term: str = "loss") -> list[dict[str, Any]]:
    """``{"epoch", "split", term}`` rows from DVCLive's ``train/<term>`` and ``val/<term>`` TSVs.

    Read back from DVCLive's files rather than collected in memory so a resumed run (DVCLive
    appends to the TSVs) gives every epoch. Kinds without epochs (PatchCore) have no such
    TSVs and get no rows.
    """
    rows: list[dict[str, Any]] = []
    for folder, split in LOSS_SPLITS:
        path = Path(log_dir) / "plots" / "metrics" / folder / f"{term}.tsv"
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            for record in csv.DictReader(handle, delimiter="\t"):
                rows.append({"epoch": int(record["step"]), "split": split, term: float(record[term])})
    return rows


def write_loss_curve(log_dir: Path) -> Path:
    """Write ``<log_dir>/loss_curve.json`` (``{"loss": rows}``, empty for kinds without epochs)."""
    path = Path(log_dir) / LOSS_CURVE
    write_json(path, {"loss": loss_curve_rows(log_dir)})
    return path


def sample_grid(inputs: torch.Tensor, recons: torch.Tensor) -> np.ndarray:
    """Inputs on the top row, reconstructions below: uint8 (2*S, k*S, 3)."""
    top = np.concatenate(list(to_uint8(inputs)), axis=1)
    bottom = np.concatenate(list(to_uint8(recons)), axis=1)
    return np.concatenate([top, bottom], axis=0)


def quiet(message: str) -> None:
    """Where non-zero ranks print to: nowhere (rank 0 reports for all)."""
