import math

import pytest
import torch
import torch.nn.functional as F

from anomaly_spotter.detectors.autoencoder import count_parameters
from anomaly_spotter.detectors.discriminative import SegmentationHead, SegmentationLoss

EQUAL = {"focal_weight": 1.0, "dice_weight": 1.0}  # the plain sum of the two terms


def random_mask(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(N, 1, S, S) binary mask with a square defect in each image but the last (empty)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    for i in range(n - 1):
        top, left = torch.randint(0, size - 8, (2,), generator=generator).tolist()
        mask[i, 0, top : top + 8, left : left + 8] = 1.0
    return mask


def test_output_shape():
    head = SegmentationHead(base_channels=16, depth=3)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    assert head(image, image).shape == (2, 1, 64, 64)


def test_sides_not_divisible_by_two_to_the_depth_work():
    head = SegmentationHead(base_channels=4, depth=3).eval()
    image = torch.zeros(1, 3, 44, 36)
    with torch.no_grad():
        assert head(image, image).shape == (1, 1, 44, 36)


def test_parameter_count_is_light():
    assert 300_000 <= count_parameters(SegmentationHead(16, 3)) <= 500_000
    assert count_parameters(SegmentationHead(8, 3)) < count_parameters(SegmentationHead(16, 3))


def test_gradient_flows_to_both_inputs():
    head = SegmentationHead(base_channels=4, depth=2)
    image = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    reconstruction = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    loss, _ = SegmentationLoss(**EQUAL)(head(image, reconstruction), random_mask())
    loss.backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "image_shape, reconstruction_shape, dtype, message",
    [
        ((3, 32, 32), (3, 32, 32), torch.float32, "rank 3"),
        ((1, 1, 32, 32), (1, 1, 32, 32), torch.float32, r"3 \(RGB\) channels"),
        ((1, 3, 32, 32), (1, 3, 16, 16), torch.float32, "same shape"),
        ((1, 3, 32, 32), (1, 3, 32, 32), torch.uint8, "float"),
        ((1, 3, 4, 4), (1, 3, 4, 4), torch.float32, "at least 8 px"),
    ],
)
def test_input_validation(image_shape, reconstruction_shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        SegmentationHead(base_channels=4, depth=3)(
            torch.zeros(image_shape, dtype=dtype), torch.zeros(reconstruction_shape, dtype=dtype)
        )


def test_perfect_prediction_gives_near_zero_loss():
    mask = random_mask(n=3)
    logits = torch.where(mask > 0, 20.0, -20.0)
    loss, parts = SegmentationLoss(**EQUAL)(logits, mask)
    assert float(loss) < 1e-4
    assert parts["focal"] < 1e-6 and parts["dice"] < 1e-4


def test_wrong_prediction_gives_large_loss():
    mask = random_mask(n=3)
    logits = torch.where(mask > 0, -20.0, 20.0)
    loss, parts = SegmentationLoss(**EQUAL)(logits, mask)
    assert parts["focal"] > 10.0  # each pixel: (1 - ~0)^2 * 20
    assert parts["dice"] > 0.99
    assert float(loss) > 10.0


def test_focal_value_by_hand():
    loss = SegmentationLoss(focal_weight=1.0, dice_weight=0.0, focal_gamma=2.0)
    # One pixel, logit 0, defect: p_t = 0.5, so (1 - 0.5)^2 * ln 2.
    total, parts = loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1))
    assert parts["focal"] == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert float(total) == pytest.approx(parts["focal"], rel=1e-6)
    # One pixel, logit 2, normal: p_t = 1 - sigmoid(2), loss = sigmoid(2)^2 * -ln(1 - sigmoid(2)).
    p = 1 / (1 + math.exp(-2.0))
    _, parts = loss(torch.full((1, 1, 1, 1), 2.0), torch.zeros(1, 1, 1, 1))
    assert parts["focal"] == pytest.approx(p**2 * -math.log(1 - p), rel=1e-5)
    # alpha weights the defect class by alpha.
    _, parts = SegmentationLoss(focal_weight=1.0, dice_weight=0.0, focal_alpha=0.25)(
        torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    )
    assert parts["focal"] == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-5)


def test_focal_with_gamma_zero_is_bce():
    logits = torch.randn(2, 1, 8, 8)
    mask = random_mask(n=2, size=8 + 8)[:, :, :8, :8]
    _, parts = SegmentationLoss(**EQUAL, focal_gamma=0.0)(logits, mask)
    assert parts["focal"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, mask)), rel=1e-5)


def test_dice_on_empty_mask_with_confident_negative_prediction_is_zero():
    _, parts = SegmentationLoss(**EQUAL)(torch.full((4, 1, 32, 32), -20.0), torch.zeros(4, 32, 32))
    assert parts["dice"] == pytest.approx(0.0, abs=1e-4)
    assert parts["focal"] == pytest.approx(0.0, abs=1e-6)


def test_mask_without_channel_axis_is_accepted():
    logits = torch.randn(2, 1, 16, 16)
    mask = random_mask(n=2, size=16)
    with_axis, _ = SegmentationLoss(**EQUAL)(logits, mask)
    without_axis, _ = SegmentationLoss(**EQUAL)(logits, mask[:, 0])
    assert float(with_axis) == pytest.approx(float(without_axis))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_loss_and_gradient_finite_for_extreme_logits(sign):
    mask = random_mask(n=2)
    logits = (sign * torch.where(mask > 0, 100.0, -100.0)).requires_grad_()
    loss, parts = SegmentationLoss(**EQUAL)(logits, mask)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and math.isfinite(parts["focal"]) and math.isfinite(parts["dice"])
    assert torch.isfinite(logits.grad).all()


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mask"):
        SegmentationLoss(**EQUAL)(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="logits"):
        SegmentationLoss(**EQUAL)(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


def test_loss_weights_scale_each_term():
    logits = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    total, parts = SegmentationLoss(focal_weight=3.0, dice_weight=0.5)(logits, mask)
    assert float(total) == pytest.approx(3.0 * parts["focal"] + 0.5 * parts["dice"], rel=1e-6)


def test_dice_over_a_batch_split_across_processes_equals_the_whole_batch_dice():
    """What DDP does: each half adds the other half's sums (an all-reduce) before the ratio."""
    logits = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    mask = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.6).float()
    loss = SegmentationLoss(**EQUAL)
    _, whole = loss(logits, mask)

    def sums(part_logits, part_mask):
        p = torch.sigmoid(part_logits)
        return torch.stack([(p * part_mask).sum(), p.sum(), part_mask.sum()])

    for first, second in ((slice(0, 2), slice(2, 4)), (slice(2, 4), slice(0, 2))):
        other = sums(logits[second], mask[second])
        _, half = loss(logits[first], mask[first], sum_over_batch=lambda s, other=other: s + other)
        assert half["dice"] == pytest.approx(whole["dice"], rel=1e-6)
    _, local = loss(logits[:2], mask[:2])
    assert local["dice"] != pytest.approx(whole["dice"], rel=1e-3)  # without the sums it differs
