"""Stage ``train``: fit one category's detector, whatever its kind, and write ``model.pt``.

:func:`train_category` is the one entry point. It asks the detector registry for the class of
``model.kind`` and calls its ``fit``; gradient-trained kinds come back to the loop in
:mod:`anomaly_spotter.training.loop` (injected through :class:`~anomaly_spotter.detectors.base.FitRun`,
so detector modules never import this package and inference never loads it).

Example:
    >>> result = train_category(data, params, Path("models/weave/model.pt"),
    ...                         Path("checkpoints/weave"), Path("dvclive/train/weave"))  # doctest: +SKIP
    >>> result.summary  # doctest: +SKIP
    'best validation loss 0.41532 at epoch 9'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_spotter import distributed
from anomaly_spotter.config import Params
from anomaly_spotter.detectors import detector_class
from anomaly_spotter.detectors.base import FitResult, FitRun
from anomaly_spotter.errors import UserError
from anomaly_spotter.training.logs import write_loss_curve
from anomaly_spotter.training.loop import train_by_gradient

if TYPE_CHECKING:
    from anomaly_spotter.processed import ProcessedCategory


def train_category(data: ProcessedCategory, params: Params, model_path: Path, checkpoint_dir: Path, log_dir: Path, *, progress: bool = True) -> FitResult:
    """Fit ``params.model.kind`` on one category end to end and write ``model_path``."""
    if data.image_size != params.preprocess.image_size:
        raise UserError(
            f"{data.root} holds {data.image_size}px images but preprocess.image_size is "
            f"{params.preprocess.image_size}; run `dvc repro` so preprocess runs again"
        )
    run = FitRun(Path(model_path), Path(checkpoint_dir), Path(log_dir), progress=progress, train_by_gradient=train_by_gradient)
    try:
        result = detector_class(params.model.kind).fit(data, params, run)
        if result.written:  # rank 0 only; every kind, so the train stage's plot output always exists
            write_loss_curve(run.log_dir)
        return result
    finally:
        distributed.shutdown()  # leaves the process group (if any) even when training failed


__all__ = ["train_category"]
