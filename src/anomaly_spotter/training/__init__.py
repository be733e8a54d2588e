"""Stage ``train``: fit one category's detector, whatever its kind, and write ``model.pt``.

:func:`train_category` is the one entry point. It asks the detector registry for the class of
``model.kind`` and fits it the way its family is fitted:

* a :class:`~anomaly_spotter.detectors.base.GradientDetector` by the gradient loop
  (:mod:`anomaly_spotter.training.loop`: epochs, checkpoints and resume, DDP, DVCLive);
* a :class:`~anomaly_spotter.detectors.base.MemoryBankDetector` by a memory bank of its
  training patches (:mod:`anomaly_spotter.training.memory_bank`);
* any other :class:`~anomaly_spotter.detectors.base.Detector` has nothing to learn and is saved as built.

What lives here: fitting of every kind, plus what only fitting needs (pasted synthetic
anomalies, augmentation, the torch datasets, data-parallel processes, and the ablation
yardstick). It may import ``detectors``, ``dataset``, ``scoring``, ``evaluation.metrics`` and the
top-level shared modules; nothing outside it imports it except the ``train`` stage and ``bench/``.

Example:
    >>> result = train_category(data, params, Path("models/weave/model.pt"),
    ...                         Path("checkpoints/weave"), Path("dvclive/train/weave"))  # doctest: +SKIP
    >>> result.summary  # doctest: +SKIP
    'best validation loss 0.41532 at epoch 9'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_spotter.detectors import check_params, detector_class
from anomaly_spotter.detectors.base import Detector, GradientDetector, MemoryBankDetector, save_model_file
from anomaly_spotter.errors import UserError
from anomaly_spotter.runtime import seed_everything
from anomaly_spotter.training import distributed
from anomaly_spotter.training.logs import write_loss_curve
from anomaly_spotter.training.loop import train_by_gradient
from anomaly_spotter.training.memory_bank import fit_memory_bank
from anomaly_spotter.training.run import FitResult, FitRun

if TYPE_CHECKING:
    from anomaly_spotter.config import Params
    from anomaly_spotter.dataset.processed import ProcessedCategory


def save_as_built(detector_class: type[Detector], data: ProcessedCategory, params: Params, run: FitRun) -> FitResult:
    """A kind with nothing to learn: ``model.pt`` of the detector ``params`` describe."""
    seed_everything(params.train.seed, params.train.num_threads)
    detector = detector_class.from_params(params)
    save_model_file(run.model_path, detector.state_dict(), detector.architecture())
    return FitResult(True, f"{detector.kind}: nothing to learn, saved as built")


def fit_detector(detector_class: type[Detector], data: ProcessedCategory, params: Params, run: FitRun) -> FitResult:
    """Fit ``detector_class`` on ``data`` as its family is fitted (see the module docstring)."""
    if issubclass(detector_class, GradientDetector):
        return train_by_gradient(detector_class, data, params, run)
    if issubclass(detector_class, MemoryBankDetector):
        return fit_memory_bank(detector_class, data, params, run)
    return save_as_built(detector_class, data, params, run)


def train_category(
    data: ProcessedCategory,
    params: Params,
    model_path: Path,
    checkpoint_dir: Path,
    log_dir: Path,
    *,
    progress: bool = True,
) -> FitResult:
    """Fit ``params.model.kind`` on one category end to end and write ``model_path``."""
    check_params(params)
    if data.image_size != params.preprocess.image_size:
        raise UserError(
            f"{data.root} holds {data.image_size}px images but preprocess.image_size is "
            f"{params.preprocess.image_size}; run `dvc repro` so preprocess runs again"
        )
    run = FitRun(Path(model_path), Path(checkpoint_dir), Path(log_dir), progress=progress)
    try:
        result = fit_detector(detector_class(params.model.kind), data, params, run)
        if result.written:  # rank 0 only; every kind, so the train stage's plot output always exists
            write_loss_curve(run.log_dir)
        return result
    finally:
        distributed.shutdown()  # leaves the process group (if any) even when training failed


__all__ = ["FitResult", "FitRun", "fit_detector", "train_category"]
