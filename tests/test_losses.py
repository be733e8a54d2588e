import pytest
import torch

from anomaly_spotter.config import LossConfig
from anomaly_spotter.detectors.losses import CombinedLoss, sobel_magnitude
from anomaly_spotter.errors import UserError


def images(seed=0, shape=(2, 3, 32, 32)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_ssim_of_image_with_itself_is_zero_and_positive_otherwise():
    loss = CombinedLoss(LossConfig(mse=0, ssim=1))
    x = images()
    assert float(loss(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(images(1), x)[0]) > 0.5  # unrelated noise images share little structure


def test_mse_and_l1_on_known_values():
    pred, target = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)
    total, parts = CombinedLoss(LossConfig(mse=2.0, l1=1.0, ssim=0))(pred, target)
    assert float(parts["mse"]) == pytest.approx(0.25)
    assert float(parts["l1"]) == pytest.approx(0.5)
    assert float(total) == pytest.approx(2 * 0.25 + 0.5)


def test_sobel_on_a_step_edge():
    x = torch.zeros(1, 1, 5, 6)
    x[..., 3:] = 1.0  # vertical step between columns 2 and 3
    magnitude = sobel_magnitude(x)[0, 0]
    assert torch.allclose(magnitude[:, 2], torch.full((5,), 4.0))  # 1 + 2 + 1
    assert torch.allclose(magnitude[:, 3], torch.full((5,), 4.0))
    assert float(magnitude[:, 0].abs().max()) < 1e-5 and float(magnitude[:, 5].abs().max()) < 1e-5


def test_edge_loss_sees_blur_that_mse_barely_sees():
    sharp = torch.zeros(1, 3, 16, 16)
    sharp[..., 8:] = 1.0
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1, count_include_pad=False)
    _, parts = CombinedLoss(LossConfig(mse=1, edge=1, ssim=0))(blurred, sharp)
    assert float(parts["edge"]) > float(parts["mse"])


def test_zero_weights_are_not_computed():
    loss = CombinedLoss(LossConfig(mse=1, l1=0, ssim=0, perceptual=0, edge=0))
    _, parts = loss(images(), images(1))
    assert list(parts) == ["mse"]
    assert loss.perceptual is None  # the VGG trunk is not even built


def test_perceptual_without_weights_names_the_missing_file(tmp_path):
    missing = tmp_path / "vgg16.pth"
    with pytest.raises(UserError, match=str(missing)):
        CombinedLoss(LossConfig(perceptual=1.0, perceptual_backbone="vgg16", vgg_weights=str(missing)))


def test_perceptual_with_weights_on_disk(tmp_path):
    from torchvision.models import vgg16

    path = tmp_path / "vgg16.pth"
    torch.manual_seed(0)
    torch.save(vgg16().state_dict(), path)  # random weights stand in for ImageNet ones
    loss = CombinedLoss(LossConfig(mse=0, ssim=0, perceptual=1.0, perceptual_backbone="vgg16", vgg_weights=str(path)))
    x = images()
    assert float(loss(x, x)[0]) == pytest.approx(0.0, abs=1e-8)
    assert float(loss(images(1), x)[0]) > 0
    assert not any(p.requires_grad for p in loss.perceptual.parameters())


def test_perceptual_works_offline_with_the_wheel_backbone():
    """The default perceptual backbone (efficientnet_lite0) needs no download: every term works on a fresh machine."""
    loss = CombinedLoss(LossConfig(mse=0, ssim=0, perceptual=1.0))
    assert loss.perceptual.backbone == "efficientnet_lite0"
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    pred = target.clone().requires_grad_(True)
    total, parts = loss(pred, target)
    assert float(total.detach()) == 0.0 and set(parts) == {"perceptual"}
    noisy = (target + 0.2 * torch.randn_like(target)).clamp(-1, 1).requires_grad_(True)
    total, _ = loss(noisy, target)
    total.backward()
    assert float(total.detach()) > 0 and noisy.grad.abs().sum() > 0  # gradients reach the reconstruction
    assert not any(p.requires_grad for p in loss.perceptual.parameters())  # the network stays frozen
