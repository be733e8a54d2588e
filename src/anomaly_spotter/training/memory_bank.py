"""Fitting a memory-bank detector (``model.kind: patchcore``): nothing is trained.

Every training patch is described by the detector's frozen backbone, a greedy coreset
(:mod:`anomaly_spotter.detectors.coreset`) keeps ``model.coreset_ratio`` of them as the memory
bank, and ``model.pt`` is written. DVCLive gets the fit's timings, the coreset's covering
radius as it grows (the plot a bank size is chosen by) and a grid of validation maps.

Example:
    >>> result = fit_memory_bank(PatchCore, data, params, FitRun(model_path, checkpoints, logs))  # doctest: +SKIP
    >>> result.summary  # doctest: +SKIP
    'patchcore efficientnet_lite2 [2, 3]: bank 1474 of 73728 patches (0.02), coverage radius 5.1, fit 6.2 s (...)'
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
from dvclive import Live

from anomaly_spotter.detectors.base import MemoryBankDetector, save_model_file
from anomaly_spotter.detectors.coreset import greedy_coreset
from anomaly_spotter.errors import UserError
from anomaly_spotter.runtime import kernel_record, seed_everything, select_device
from anomaly_spotter.scoring import score_images
from anomaly_spotter.training.run import FitResult, FitRun

if TYPE_CHECKING:
    from anomaly_spotter.config import Params
    from anomaly_spotter.dataset.processed import ProcessedCategory

GROWTH_POINTS = 50  # points of the logged coreset-growth curve: enough to see where it flattens
SAMPLE_IMAGES = 4  # validation images in the logged map grid, as the autoencoders' reconstruction grid


def fit_memory_bank(
    detector_class: type[MemoryBankDetector], data: ProcessedCategory, params: Params, run: FitRun
) -> FitResult:
    """Extract the train patches, keep a greedy coreset as the bank, write ``model.pt`` and DVCLive.

    ``model.pt`` is byte-identical for identical data and params (fit timings go to DVCLive
    and the result's details, not into the file).
    """
    started = time.perf_counter()
    seed_everything(params.train.seed, params.train.num_threads)
    if len(data.train) == 0:
        raise UserError(f"{data.root}: no training images; patchcore needs normal images in train/good")
    device = select_device(params.train.device)
    detector = cast(MemoryBankDetector, detector_class.from_params(params).to(device).eval())
    batch_size = params.score.batch_size

    tick = time.perf_counter()
    features = detector.extract(data.train, batch_size, device)  # (N_train * g * g, D)
    extract_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    coreset = greedy_coreset(
        features, params.model.coreset_ratio, params.train.seed, group_rows=params.model.coreset_group_patches
    )
    coreset_seconds = time.perf_counter() - tick
    detector.set_memory_bank(features[coreset.indices.to(features.device)])
    train_patches = int(features.shape[0])
    del features
    bank_size = int(detector.memory_bank.shape[0])
    radius = float(coreset.radius)
    extra = {
        "bank_size": bank_size,
        "train_patches": train_patches,
        "coverage_radius": radius,
        "coverage_radius_exact": coreset.radius_exact,
        "backbone_file": detector.weights_file,
        "backbone_sha256": detector.weights_sha256,
        "trained_with": kernel_record(device, None),
    }
    state = {name: tensor.detach().cpu() for name, tensor in detector.state_dict().items()}
    save_model_file(run.model_path, state, detector.architecture(), **extra)
    fit_seconds = time.perf_counter() - started

    validation = score_images(detector, data.val, params.score)  # as the thresholds stage scores them
    val_maps, val_scores = validation.maps, validation.scores
    summary = {
        "fit_seconds": fit_seconds,
        "extract_seconds": extract_seconds,
        "coreset_seconds": coreset_seconds,
        "bank_size": bank_size,
        "train_patches": train_patches,
        "coverage_radius": radius,
        "coverage_radius_exact": int(coreset.radius_exact),  # 0: radius is an upper bound (very large sets)
        "coreset_groups": coreset.groups,
    }
    if len(val_scores):
        summary["val_score_mean"] = float(val_scores.mean())
        summary["val_score_max"] = float(val_scores.max())
    live = Live(str(run.log_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    try:
        live.log_params({"backbone_file": detector.weights_file, "backbone_sha256": detector.weights_sha256})
        # The plot a bank size is chosen by: how the covering radius shrinks as centres are added.
        for size, radius_at in _growth_points(coreset.growth):
            live.step = size
            live.log_metric("coreset/radius", radius_at)
        live.log_image("validation_maps.png", _map_grid(data.val[:SAMPLE_IMAGES], val_maps[:SAMPLE_IMAGES]))
        for name, value in summary.items():
            live.log_metric(name, value, plot=False)
    finally:
        live.end()
    line = (
        f"{detector.kind} {detector.describe()}: bank {bank_size} of {train_patches} patches "
        f"({params.model.coreset_ratio:g}{f', {coreset.groups} groups' if coreset.groups > 1 else ''}), "
        f"coverage radius {'' if coreset.radius_exact else '<= '}{radius:.3g}, fit {fit_seconds:.1f} s "
        f"(features {extract_seconds:.1f} s, coreset {coreset_seconds:.1f} s)"
    )
    return FitResult(
        written=True,
        summary=line,
        details={**summary, "backbone_file": detector.weights_file, "backbone_sha256": detector.weights_sha256},
    )


def _growth_points(growth: Sequence[float], points: int = GROWTH_POINTS) -> list[tuple[int, float]]:
    """(bank size, covering radius) at about ``points`` evenly spaced sizes, the last included.

    ``growth[i]`` is the radius once ``i + 1`` centres were chosen (the next centre's distance).

    >>> _growth_points([4.0, 3.0, 2.0, 1.0], points=2)
    [(2, 3.0), (4, 1.0)]
    """
    if not growth:
        return []
    count = len(growth)
    sizes = sorted({max(1, round(count * (i + 1) / points)) for i in range(points)})
    return [(size, float(growth[size - 1])) for size in sizes]


def _map_grid(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Images (k, S, S, 3) uint8 on top, their anomaly maps below (jet, shared scale): uint8 (2S, kS, 3)."""
    import cv2

    top = np.concatenate(list(images), axis=1)
    scaled = np.clip(np.concatenate(list(maps), axis=1) / max(float(maps.max()), 1e-12), 0.0, 1.0)
    bottom = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]  # BGR -> RGB
    return np.concatenate([top, bottom], axis=0)
