"""Run a trained model over images: reconstructions, anomaly maps and image scores.

Shared by the ``thresholds`` and ``evaluate`` stages so both score images the same way
(``params.yaml`` ``score``). Batched and under ``torch.inference_mode``.

Example:
    >>> scored = score_images(model, data.val, params.score)  # doctest: +SKIP
    >>> scored.maps.shape, scored.scores.shape  # doctest: +SKIP
    ((11, 128, 128), (11,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from anomaly_spotter.anomaly_map import anomaly_map, image_scores
from anomaly_spotter.config import ScoreConfig
from anomaly_spotter.data import to_tensor, to_uint8


@dataclass(frozen=True)
class ScoredImages:
    """Per-image results at model resolution."""

    maps: np.ndarray  # float32 (N, S, S), higher = more anomalous
    scores: np.ndarray  # float64 (N,)
    reconstructions: np.ndarray  # uint8 (N, S, S, 3)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def score_images(model: torch.nn.Module, images: np.ndarray, config: ScoreConfig) -> ScoredImages:
    """Reconstruct uint8 (N, S, S, 3) ``images`` and score them as ``config`` says."""
    model.eval()
    device = model_device(model)
    maps, scores, recons = [], [], []
    for start in range(0, len(images), config.batch_size):
        x = to_tensor(np.asarray(images[start : start + config.batch_size])).to(device)  # (B, 3, S, S)
        recon = model(x)
        batch_maps = anomaly_map(
            x,
            recon,
            kind=config.map,
            ssim_window=config.ssim_window,
            combined_ssim_weight=config.combined_ssim_weight,
            smoothing_sigma=config.smoothing_sigma,
        )  # (B, S, S)
        scores.append(image_scores(batch_maps, reduction=config.image_score, topk_percent=config.topk_percent).double().cpu().numpy())
        maps.append(batch_maps.float().cpu().numpy())
        recons.append(to_uint8(recon))
    if not maps:
        raise ValueError("no images to score")
    return ScoredImages(np.concatenate(maps), np.concatenate(scores), np.concatenate(recons))
