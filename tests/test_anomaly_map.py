"""Anomaly maps, image scores and map resizing (small CPU tensors, milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_spotter.detectors.anomaly_map import (
    RECONSTRUCTION_MAPS,
    anomaly_map,
    gaussian_kernel_size,
    image_scores,
    resize_to,
    topk_count,
)


def images(n: int = 2, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [-1, 1] (SSIM is meaningless on pure noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1


@pytest.mark.parametrize("kind", RECONSTRUCTION_MAPS)
@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_identical_images_give_zero_map(kind: str, sigma: float) -> None:
    x = images()
    maps = anomaly_map(x, x.clone(), kind=kind, ssim_window=5, smoothing_sigma=sigma)
    assert maps.shape == (2, 24, 24) and maps.dtype == torch.float32
    assert float(maps.abs().max()) < 1e-4


@pytest.mark.parametrize("kind", RECONSTRUCTION_MAPS)
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_local_perturbation_peaks_inside_the_perturbed_area(kind: str, sigma: float) -> None:
    x = images(n=1, size=32)
    y = x.clone()
    y[:, :, 12:18, 20:26] = -x[:, :, 12:18, 20:26]  # flip a 6x6 patch
    amap = anomaly_map(x, y, kind=kind, ssim_window=5, smoothing_sigma=sigma)[0]
    row, col = divmod(int(amap.argmax()), amap.shape[1])
    assert 12 <= row < 18 and 20 <= col < 26
    assert float(amap[:4, :4].max()) < 1e-4  # far from the patch: untouched


def test_l2_is_channel_mean_of_squared_error_on_unit_range() -> None:
    x = torch.zeros(1, 3, 8, 8)
    y = x.clone()
    y[0, 0, 2, 3] = 1.0  # one channel moves by 0.5 on [0, 1]: 0.25 / 3 channels
    amap = anomaly_map(x, y, kind="l2", smoothing_sigma=0)
    assert float(amap[0, 2, 3]) == pytest.approx(0.25 / 3)
    assert float(amap.sum()) == pytest.approx(0.25 / 3)


def test_combined_is_weighted_sum_of_halved_dssim_and_l2() -> None:
    x, y = images(seed=1), images(seed=2)
    l2 = anomaly_map(x, y, kind="l2", ssim_window=7, smoothing_sigma=0)
    dssim = anomaly_map(x, y, kind="ssim", ssim_window=7, smoothing_sigma=0)
    combined = anomaly_map(x, y, kind="combined", ssim_window=7, combined_ssim_weight=0.3, smoothing_sigma=0)
    torch.testing.assert_close(combined, 0.3 * dssim / 2 + 0.7 * l2)
    assert float(dssim.min()) >= 0 and float(dssim.max()) <= 2
    assert float(combined.min()) >= 0 and float(combined.max()) <= 1


def test_smoothing_preserves_shape_and_mass_and_lowers_the_peak() -> None:
    x = torch.zeros(2, 3, 20, 30)
    y = x.clone()
    y[:, :, 10, 15] = 1.0
    raw = anomaly_map(x, y, kind="l2", smoothing_sigma=0)
    smooth = anomaly_map(x, y, kind="l2", smoothing_sigma=2.0)
    assert smooth.shape == raw.shape == (2, 20, 30) and smooth.dtype == torch.float32
    assert float(smooth.sum()) == pytest.approx(float(raw.sum()), rel=1e-4)  # normalised kernel, peak far from borders
    assert float(smooth.max()) < float(raw.max())
    assert gaussian_kernel_size(2.0) == 13


def test_tiny_maps_with_a_kernel_larger_than_the_map() -> None:
    x = images(n=1, size=8)
    maps = anomaly_map(x, images(n=1, size=8, seed=3), kind="l2", smoothing_sigma=4.0)  # 25 px kernel on 8 px
    assert maps.shape == (1, 8, 8) and torch.isfinite(maps).all()


def test_works_under_inference_mode_with_grad_inputs_and_half_precision() -> None:
    x = images().requires_grad_(True)
    y = images(seed=5)
    with torch.inference_mode():
        maps = anomaly_map(x.detach().clone(), y, kind="combined", ssim_window=5, smoothing_sigma=1.0)
        scores = image_scores(maps)
    assert maps.shape == (2, 24, 24) and scores.shape == (2,)
    half = anomaly_map(x.detach().half(), y.half(), kind="ssim", ssim_window=5, smoothing_sigma=0)
    assert half.dtype == torch.float32


def test_image_scores_max_and_topk() -> None:
    maps = torch.arange(32.0).reshape(2, 4, 4)
    assert image_scores(maps, reduction="max").tolist() == [15.0, 31.0]
    # k covering all pixels is the mean
    torch.testing.assert_close(image_scores(maps, reduction="topk_mean", topk_percent=100.0), maps.mean(dim=(1, 2)))
    # 25 % of 16 pixels = top 4: mean of 12..15 = 13.5
    assert image_scores(maps, reduction="topk_mean", topk_percent=25.0).tolist() == [13.5, 29.5]
    # a tiny percentage still takes one pixel, i.e. the max
    assert image_scores(maps, reduction="topk_mean", topk_percent=0.01).tolist() == [15.0, 31.0]


def test_topk_count_rounds_up_and_ignores_float_noise() -> None:
    assert topk_count(16384, 1.0) == 164  # 163.84 -> 164
    assert topk_count(30, 10.0) == 3  # 3.0000000000000004 must not become 4
    assert topk_count(10, 0.1) == 1
    assert topk_count(10, 100.0) == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "l1"}, "kind must be one of"),
        ({"ssim_window": 4}, "odd integer"),
        ({"ssim_window": 1}, "odd integer"),
        ({"ssim_window": 31}, "smaller than ssim_window"),
        ({"combined_ssim_weight": 1.5}, "combined_ssim_weight"),
        ({"smoothing_sigma": -1.0}, "smoothing_sigma"),
        ({"smoothing_sigma": float("nan")}, "smoothing_sigma"),
    ],
)
def test_anomaly_map_argument_errors(kwargs: dict, message: str) -> None:
    x = images()
    with pytest.raises(ValueError, match=message):
        anomaly_map(x, x, **kwargs)


def test_anomaly_map_input_errors() -> None:
    x = images()
    with pytest.raises(ValueError, match="differ in shape"):
        anomaly_map(x, x[:, :, :20])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        anomaly_map(x[0], x[0])
    with pytest.raises(ValueError, match="floating-point"):
        anomaly_map(x.to(torch.uint8), x.to(torch.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        anomaly_map(x[:0], x[:0])


def test_image_scores_errors() -> None:
    maps = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="reduction"):
        image_scores(maps, reduction="mean")
    with pytest.raises(ValueError, match="topk_percent"):
        image_scores(maps, topk_percent=0.0)
    with pytest.raises(ValueError, match="topk_percent"):
        image_scores(maps, topk_percent=101.0)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        image_scores(maps[0])


def test_resize_to_original_size() -> None:
    amap = np.arange(16, dtype=np.float64).reshape(4, 4)
    out = resize_to(amap, (6, 10))  # (height, width)
    assert out.shape == (6, 10) and out.dtype == np.float32
    assert amap.min() <= out.min() and out.max() <= amap.max()  # bilinear: no overshoot
    assert np.allclose(resize_to(np.full((3, 5), 0.25, np.float32), (7, 9)), 0.25)
    same = resize_to(amap, (4, 4))
    assert np.array_equal(same, amap) and same is not amap
    with pytest.raises(ValueError, match="2-D"):
        resize_to(np.zeros((2, 2, 2)), (4, 4))
    with pytest.raises(ValueError, match="size"):
        resize_to(np.zeros((2, 2)), (0, 4))
