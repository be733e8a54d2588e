"""Per-pixel anomaly maps from reconstructions, image scores from maps, and map resizing.

An anomaly map says, for every pixel, how badly the autoencoder reconstructed it: higher means
more anomalous. Maps are computed at model resolution, batched, in float32 and without autograd
state, so they work unchanged under ``torch.inference_mode()`` and on any device.

Map kinds (``images`` and ``reconstructions`` are first mapped from [-1, 1] to [0, 1] and clipped
there, so a reconstruction that overshoots the range cannot produce unbounded errors):

* ``l2`` – squared error averaged over channels, in [0, 1].
* ``ssim`` – ``1 - SSIM`` averaged over channels, from :func:`kornia.metrics.ssim` (Gaussian
  window, sigma 1.5, ``same`` padding), in [0, 2] (0 = identical neighbourhoods).
* ``head`` – (discriminative models) the segmentation head's sigmoid output, see :func:`head_map`.
* ``combined`` – ``w * (1 - SSIM) / 2 + (1 - w) * l2`` with ``w = combined_ssim_weight``. Both
  terms are divided by their *fixed* maximum so each lies in [0, 1]; no data-dependent (per
  image or per batch) normalisation is used, because that would make a good image's map look as
  anomalous as a defective one and make scores depend on batch composition. Note that in
  practice the L2 term is much smaller than the SSIM term (squared errors of a decent
  reconstruction are ~1e-3), so raise ``1 - w`` to give intensity errors real weight.

Example:
    >>> import torch
    >>> x = torch.zeros(2, 3, 32, 32)
    >>> y = x.clone(); y[1, :, 10:14, 10:14] = 1.0
    >>> maps = anomaly_map(x, y, kind="l2", smoothing_sigma=0)
    >>> tuple(maps.shape), float(maps[0].max()), float(maps[1].max())
    ((2, 32, 32), 0.0, 0.25)
    >>> image_scores(maps, reduction="max").tolist()
    [0.0, 0.25]
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from kornia.filters import gaussian_blur2d
from kornia.metrics import ssim as kornia_ssim

RECONSTRUCTION_MAPS = ("l2", "ssim", "combined")
REDUCTIONS = ("max", "topk_mean")


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size covering ±3 sigma: ``2 * ceil(3 * sigma) + 1``.

    >>> gaussian_kernel_size(4.0), gaussian_kernel_size(0.5)
    (25, 5)
    """
    return 2 * math.ceil(3.0 * sigma) + 1


def _check_map_args(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    kind: str,
    ssim_window: int,
    combined_ssim_weight: float,
    smoothing_sigma: float,
) -> None:
    if kind not in RECONSTRUCTION_MAPS:
        raise ValueError(f"kind must be one of {', '.join(RECONSTRUCTION_MAPS)}; got {kind!r}")
    for name, t in (("images", images), ("reconstructions", reconstructions)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape (N, C, H, W); got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor in [-1, 1]; got {t.dtype}")
    if images.shape != reconstructions.shape:
        raise ValueError(
            f"images {tuple(images.shape)} and reconstructions {tuple(reconstructions.shape)} differ in shape"
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch")
    if isinstance(ssim_window, bool) or not isinstance(ssim_window, int) or ssim_window < 3 or ssim_window % 2 == 0:
        raise ValueError(f"ssim_window must be an odd integer >= 3; got {ssim_window!r}")
    if kind != "l2" and min(images.shape[-2:]) < ssim_window:
        raise ValueError(
            f"images of {images.shape[-2]}x{images.shape[-1]} px are smaller than ssim_window={ssim_window}"
        )
    if not (0.0 <= combined_ssim_weight <= 1.0):
        raise ValueError(f"combined_ssim_weight must be in [0, 1]; got {combined_ssim_weight!r}")
    if not (math.isfinite(smoothing_sigma) and smoothing_sigma >= 0.0):
        raise ValueError(f"smoothing_sigma must be a finite number >= 0 (0 disables); got {smoothing_sigma!r}")


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] in float32 (half precision would make SSIM's variances noisy)."""
    return ((x.float() + 1.0) * 0.5).clamp_(0.0, 1.0)


def anomaly_map(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    *,
    kind: str = "ssim",
    ssim_window: int = 11,
    combined_ssim_weight: float = 0.5,
    smoothing_sigma: float = 4.0,
) -> torch.Tensor:
    """Anomaly maps (N, H, W) float32 of ``images`` vs. ``reconstructions`` (both (N, C, H, W) in [-1, 1]).

    ``kind`` is ``l2``, ``ssim`` or ``combined`` (see the module docstring for the scales).
    ``smoothing_sigma`` (pixels at model resolution, 0 = off) blurs the map with a Gaussian of
    kernel size :func:`gaussian_kernel_size`; borders are replicated so tiny maps work too.
    Smoothing suppresses isolated noisy pixels so that small, compact defects stand out.

    >>> import torch
    >>> x = torch.rand(1, 3, 16, 16) * 2 - 1
    >>> float(anomaly_map(x, x, kind="combined", ssim_window=5).abs().max()) < 1e-4
    True
    """
    _check_map_args(images, reconstructions, kind, ssim_window, combined_ssim_weight, smoothing_sigma)
    x, y = _to_unit(images), _to_unit(reconstructions)

    def l2() -> torch.Tensor:
        return (x - y).square().mean(dim=1)

    def dssim() -> torch.Tensor:
        # SSIM lies in [-1, 1]; clamp away float noise so identical inputs give exactly >= 0.
        return (1.0 - kornia_ssim(x, y, ssim_window, max_val=1.0)).mean(dim=1).clamp_(0.0, 2.0)

    if kind == "l2":
        maps = l2()
    elif kind == "ssim":
        maps = dssim()
    else:
        w = float(combined_ssim_weight)
        maps = w * 0.5 * dssim() + (1.0 - w) * l2()

    return smooth(maps, smoothing_sigma)


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, H, W) maps (``sigma`` px, 0 = none), borders replicated; float32 out."""
    if sigma > 0:
        k = gaussian_kernel_size(sigma)
        maps = gaussian_blur2d(
            maps.unsqueeze(1), (k, k), (float(sigma), float(sigma)), border_type="replicate"
        ).squeeze(1)
    return maps.float().contiguous()


def head_map(logits: torch.Tensor, *, smoothing_sigma: float = 4.0) -> torch.Tensor:
    """Anomaly probability maps (N, H, W) in [0, 1] from a segmentation head's logits (N, 1, H, W).

    >>> import torch
    >>> head_map(torch.zeros(2, 1, 8, 8), smoothing_sigma=0).unique().tolist()
    [0.5]
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be a (N, 1, H, W) tensor; got {getattr(logits, 'shape', type(logits).__name__)}")
    if not (math.isfinite(smoothing_sigma) and smoothing_sigma >= 0.0):
        raise ValueError(f"smoothing_sigma must be a finite number >= 0 (0 disables); got {smoothing_sigma!r}")
    return smooth(torch.sigmoid(logits.float())[:, 0], smoothing_sigma)


def topk_count(num_pixels: int, topk_percent: float) -> int:
    """Pixels in the top ``topk_percent`` % of ``num_pixels``: rounded up, at least 1.

    >>> topk_count(100, 1.0), topk_count(100, 0.001), topk_count(30, 10.0), topk_count(16, 100.0)
    (1, 1, 3, 16)
    """
    # The small epsilon keeps float noise (10% of 30 = 3.0000000000000004) from adding a pixel.
    return max(1, min(num_pixels, math.ceil(num_pixels * topk_percent / 100.0 - 1e-9)))


def image_scores(maps: torch.Tensor, *, reduction: str = "topk_mean", topk_percent: float = 1.0) -> torch.Tensor:
    """One anomaly score per map (N,) from maps (N, H, W), in the maps' dtype.

    ``max`` takes the single highest pixel (MVTec's official choice); ``topk_mean`` averages
    the highest ``topk_percent`` % pixels (at least one), which is less sensitive to one noisy
    pixel yet still driven by small defects.

    >>> import torch
    >>> m = torch.arange(8.0).reshape(2, 2, 2)
    >>> image_scores(m, reduction="topk_mean", topk_percent=50).tolist()
    [2.5, 6.5]
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3:
        raise ValueError(f"maps must be a (N, H, W) tensor; got {getattr(maps, 'shape', type(maps).__name__)}")
    if maps.shape[1] * maps.shape[2] == 0:
        raise ValueError(f"maps have no pixels: {tuple(maps.shape)}")
    if not (0.0 < topk_percent <= 100.0):
        raise ValueError(f"topk_percent must be in (0, 100]; got {topk_percent!r}")
    flat = maps.reshape(maps.shape[0], -1)
    if reduction == "max":
        return flat.amax(dim=1)
    k = topk_count(flat.shape[1], topk_percent)
    return flat.topk(k, dim=1, sorted=False).values.mean(dim=1)


def resize_to(map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a (h, w) map to ``size`` = (height, width); float32 out.

    Used to bring model-resolution maps back to each test image's original resolution, where
    MVTec's protocol compares them with the ground-truth masks. OpenCV's bilinear resize uses
    pixel-centre alignment (like ``align_corners=False``) and replicates at the border.

    >>> resize_to(np.ones((4, 4), np.float32), (6, 8)).shape
    (6, 8)
    """
    arr = np.asarray(map)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"map must be a non-empty 2-D array; got shape {arr.shape}")
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be (height, width) >= 1; got {size!r}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape == (height, width):
        return arr.copy()
    # cv2 takes (width, height): the classic swap bug, hence the explicit names above.
    return cv2.resize(arr, (width, height), interpolation=cv2.INTER_LINEAR)
