"""``CombinedLoss``: the weighted reconstruction loss.

Components (each weight comes from ``params.yaml`` ``loss``; a weight of 0 means the term is
neither built nor computed):

* ``mse``, ``l1`` – pixel errors;
* ``ssim`` – 1 − SSIM (``pytorch_msssim.ssim``, 11 px window), structure-aware;
* ``perceptual`` – MSE between VGG16 features up to relu3_3 (ImageNet normalisation);
* ``edge`` – L1 between Sobel gradient magnitudes, which keeps edges sharp.

Inputs are (N, 3, H, W) in [-1, 1].

Example:
    >>> import torch
    >>> from anomaly_spotter.config import LossConfig
    >>> loss = CombinedLoss(LossConfig(mse=1.0, ssim=0.5))
    >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
    >>> total, parts = loss(x, x)
    >>> round(float(total), 6), sorted(parts)
    (0.0, ['mse', 'ssim'])
"""

from __future__ import annotations


from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

from anomaly_spotter.config import LossConfig
from anomaly_spotter.errors import UserError

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's file name for IMAGENET1K_V1 weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_RELU3_3 = 16  # features[:16] ends with relu3_3


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) / 2.0


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude of (N, C, H, W), replicate-padded, same shape."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
    n, c, h, w = x.shape
    padded = F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    grad = F.conv2d(padded, kernels)  # (N*C, 2, H, W)
    return torch.sqrt(grad.pow(2).sum(dim=1) + 1e-12).reshape(n, c, h, w)


def vgg16_weights_path(configured: str = "") -> Path:
    """Where the VGG16 weights are looked for: ``loss.vgg_weights`` or torchvision's cache."""
    if configured:
        return Path(configured)
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


class PerceptualLoss(nn.Module):
    """MSE between frozen VGG16 features (up to relu3_3) of prediction and target.

    The weights are never downloaded: they are read from ``weights_path`` and a clear error
    names that file when it is missing.
    """

    def __init__(self, weights_path: Path) -> None:
        super().__init__()
        from torchvision.models import vgg16  # imported only when the term is used

        if not weights_path.is_file():
            raise UserError(
                f"loss.perceptual > 0 needs VGG16 ImageNet weights at {weights_path}, which is missing. "
                f"Copy torchvision's {VGG16_FILE} there (or set loss.vgg_weights to its path), "
                "or set loss.perceptual: 0."
            )
        network = vgg16()
        network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.features = network.features[:VGG16_RELU3_3].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        def embed(x: torch.Tensor) -> torch.Tensor:
            return self.features((_to_unit(x) - self.mean) / self.std)

        return F.mse_loss(embed(pred), embed(target))


class CombinedLoss(nn.Module):
    """Weighted sum of the enabled components; ``forward`` returns ``(total, components)``.

    ``components`` maps each enabled term's name to its unweighted value (detached), which is
    what the training log shows.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.weights = {
            name: float(getattr(config, name))
            for name in ("mse", "l1", "ssim", "perceptual", "edge")
            if getattr(config, name) > 0
        }
        if not self.weights:
            raise ValueError("at least one loss weight must be > 0")
        # Built only when used: the VGG16 trunk costs memory, time and a weights file.
        self.perceptual = PerceptualLoss(vgg16_weights_path(config.vgg_weights)) if "perceptual" in self.weights else None

    def component(self, name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if name == "mse":
            return F.mse_loss(pred, target)
        if name == "l1":
            return F.l1_loss(pred, target)
        if name == "ssim":
            # pytorch_msssim works on [0, data_range]; float32 for a stable result under AMP.
            return 1.0 - ssim(_to_unit(pred.float()), _to_unit(target.float()), data_range=1.0, size_average=True)
        if name == "edge":
            return F.l1_loss(sobel_magnitude(pred), sobel_magnitude(target))
        if name == "perceptual":
            assert self.perceptual is not None
            return self.perceptual(pred, target)
        raise KeyError(name)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        components = {name: self.component(name, pred, target) for name in self.weights}
        total = sum(self.weights[name] * value for name, value in components.items())
        return total, {name: value.detach() for name, value in components.items()}



