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

from anomaly_spotter.anomaly_map import anomaly_map, head_map, image_scores
from anomaly_spotter.config import ScoreConfig
from anomaly_spotter.data import to_tensor, to_uint8
from anomaly_spotter.model import split_output


@dataclass(frozen=True)
class ScoredImages:
    """Per-image results at model resolution."""

    maps: np.ndarray  # float32 (N, S, S), higher = more anomalous
    scores: np.ndarray  # float64 (N,)
    reconstructions: np.ndarray  # uint8 (N, S, S, 3)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def resolve_map_kind(kind: str, has_head: bool) -> str:
    """``score.map`` with ``auto`` resolved: the head's map when the model has one, else 1 - SSIM.

    >>> resolve_map_kind("auto", True), resolve_map_kind("auto", False), resolve_map_kind("l2", True)
    ('head', 'ssim', 'l2')
    """
    if kind == "auto":
        return "head" if has_head else "ssim"
    if kind == "head" and not has_head:
        raise ValueError("score.map is 'head' but this model has no segmentation head (model.kind reconstruction)")
    return kind


def output_maps(images: torch.Tensor, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], config: ScoreConfig) -> torch.Tensor:
    """Anomaly maps (N, S, S) from images (N, 3, S, S) and the model's ``forward`` output.

    The one place that turns a model output into maps: the ``thresholds``, ``evaluate`` and
    ``export`` stages and ``predict`` all call it, so they cannot disagree.
    """
    reconstruction, logits = split_output(output)
    kind = resolve_map_kind(config.map, logits is not None)
    if kind == "head":
        assert logits is not None
        return head_map(logits, smoothing_sigma=config.smoothing_sigma)
    return anomaly_map(
        images,
        reconstruction,
        kind=kind,
        ssim_window=config.ssim_window,
        combined_ssim_weight=config.combined_ssim_weight,
        smoothing_sigma=config.smoothing_sigma,
    )


@torch.inference_mode()
def score_images(model: torch.nn.Module, images: np.ndarray, config: ScoreConfig) -> ScoredImages:
    """Reconstruct uint8 (N, S, S, 3) ``images`` and score them as ``config`` says."""
    model.eval()
    device = model_device(model)
    maps, scores, recons = [], [], []
    for start in range(0, len(images), config.batch_size):
        x = to_tensor(np.asarray(images[start : start + config.batch_size])).to(device)  # (B, 3, S, S)
        output = model(x)
        recon, _ = split_output(output)
        batch_maps = output_maps(x, output, config)  # (B, S, S)
        scores.append(image_scores(batch_maps, reduction=config.image_score, topk_percent=config.topk_percent).double().cpu().numpy())
        maps.append(batch_maps.float().cpu().numpy())
        recons.append(to_uint8(recon))
    if not maps:
        raise ValueError("no images to score")
    return ScoredImages(np.concatenate(maps), np.concatenate(scores), np.concatenate(recons))
