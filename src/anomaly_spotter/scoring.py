"""Run a fitted detector over images: anomaly maps, image scores and (where it has them) reconstructions.

Shared by the ``thresholds``, ``evaluate`` and ``export`` stages and ``predict``, so all score
images the same way (``params.yaml`` ``score``), through the detector interface only
(:class:`~anomaly_spotter.detectors.base.Detector`). Batched and under ``torch.inference_mode``.

Example:
    >>> scored = score_images(model, data.val, params.score)  # doctest: +SKIP
    >>> scored.maps.shape, scored.scores.shape  # doctest: +SKIP
    ((11, 128, 128), (11,))
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anomaly_spotter.tensors import to_tensor, to_uint8

if TYPE_CHECKING:
    from anomaly_spotter.config import ScoreConfig
    from anomaly_spotter.detectors.base import Detector


@dataclass(frozen=True)
class ScoredImages:
    """Per-image results at model resolution."""

    maps: np.ndarray  # float32 (N, S, S), higher = more anomalous
    scores: np.ndarray  # float64 (N,)
    reconstructions: np.ndarray | None  # uint8 (N, S, S, 3); None for kinds without one (patchcore)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's tensors live (a detector may hold buffers only, e.g. a fixed map)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def output_maps(model: Detector, images: torch.Tensor, output: Any, config: ScoreConfig) -> torch.Tensor:
    """Anomaly maps (N, S, S) from images (N, 3, S, S) and ``model``'s ``forward`` output.

    The one place that turns a model output into maps: the ``thresholds``, ``evaluate`` and
    ``export`` stages and ``predict`` all call it, so they cannot disagree.
    """
    return model.anomaly_maps(images, output, config)


@torch.inference_mode()
def score_images(model: Detector, images: np.ndarray, config: ScoreConfig) -> ScoredImages:
    """Score uint8 (N, S, S, 3) ``images`` with ``model`` as ``config`` says."""
    model.eval()
    device = model_device(model)
    maps, scores, recons = [], [], []
    for start in range(0, len(images), config.batch_size):
        x = to_tensor(np.asarray(images[start : start + config.batch_size])).to(device)  # (B, 3, S, S)
        output = model(x)
        batch_maps = output_maps(model, x, output, config)  # (B, S, S)
        scores.append(model.image_scores(batch_maps, output, config).double().cpu().numpy())
        maps.append(batch_maps.float().cpu().numpy())
        recon = model.reconstruction(output)
        if recon is not None:
            recons.append(to_uint8(recon))
    if not maps:
        raise ValueError("no images to score")
    return ScoredImages(np.concatenate(maps), np.concatenate(scores), np.concatenate(recons) if recons else None)
