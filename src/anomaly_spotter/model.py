"""``AutoencoderUNetLite``: the reconstruction model, one per category.

Shapes for the default 128 px input and ``base_channels=32``::

    x           (N, 3, 128, 128) in [-1, 1]
    enc1        (N, 32, 128, 128)   double conv
    enc2        (N, 64, 64, 64)     maxpool + double conv
    enc3        (N, 128, 32, 32)    maxpool + double conv
    bottleneck  (N, 512, 16, 16)    maxpool + conv3x3 -> 512 + conv1x1 -> 512
    dec3        (N, 128, 32, 32)    convT x2 [+ enc3 skip] + double conv
    dec2        (N, 64, 64, 64)     convT x2 [+ enc2 skip] + double conv
    dec1        (N, 32, 128, 128)   convT x2 [+ enc1 skip] + double conv
    out         (N, 3, 128, 128)    conv1x1 + tanh

About 1.9 M parameters without skips. Which skip connections exist is a parameter
(``skips``, levels 1-3): with all of them the decoder can copy the input, defects included,
and the reconstruction error no longer shows the defect, so the default uses none.

Example:
    >>> import torch
    >>> model = AutoencoderUNetLite()
    >>> model(torch.zeros(2, 3, 128, 128)).shape
    torch.Size([2, 3, 128, 128])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anomaly_spotter.errors import UserError

if TYPE_CHECKING:
    from anomaly_spotter.config import ModelConfig

DOWNSAMPLINGS = 3  # the input side must be divisible by 2**3


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(conv3x3 -> BN -> ReLU) x 2, keeping the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AutoencoderUNetLite(nn.Module):
    """U-Net-shaped convolutional autoencoder with selectable skip connections.

    Args:
        base_channels: channels of the first level; they double at each downsampling.
        bottleneck_channels: channels at 1/8 resolution.
        skips: levels (1 = full resolution, 2, 3) whose encoder features are concatenated
            into the decoder.
        image_size: expected input side (for input validation only).
    """

    def __init__(
        self,
        base_channels: int = 32,
        bottleneck_channels: int = 512,
        skips: Sequence[int] = (),
        image_size: int = 128,
    ) -> None:
        super().__init__()
        if image_size % 2**DOWNSAMPLINGS:
            raise ValueError(f"image_size must be divisible by {2**DOWNSAMPLINGS}, got {image_size}")
        if any(level not in (1, 2, 3) for level in skips):
            raise ValueError(f"skips are levels 1, 2 or 3, got {list(skips)}")
        self.image_size = image_size
        self.skips = tuple(sorted(set(skips)))
        c1, c2, c3 = base_channels, 2 * base_channels, 4 * base_channels
        self.enc1 = double_conv(3, c1)
        self.enc2 = double_conv(c1, c2)
        self.enc3 = double_conv(c2, c3)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(c3, bottleneck_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(bottleneck_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(bottleneck_channels, bottleneck_channels, 1, bias=False),
            nn.BatchNorm2d(bottleneck_channels),
            nn.ReLU(inplace=True),
        )
        self.up3 = nn.ConvTranspose2d(bottleneck_channels, c3, 2, stride=2)
        self.dec3 = double_conv(c3 * (2 if 3 in self.skips else 1), c3)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = double_conv(c2 * (2 if 2 in self.skips else 1), c2)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = double_conv(c1 * (2 if 1 in self.skips else 1), c1)
        self.head = nn.Conv2d(c1, 3, 1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with a clear message unless ``x`` is (N, 3, S, S) float."""
        if x.dim() != 4:
            raise ValueError(f"expected a batch of shape (N, 3, {self.image_size}, {self.image_size}), got rank {x.dim()} shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 (RGB) channels, got {x.shape[1]}; replicate grayscale to 3 channels")
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {x.shape[2]}x{x.shape[3]}; resize in preprocessing")
        if not x.is_floating_point():
            raise ValueError(f"expected a float tensor in [-1, 1], got {x.dtype}")

    def _merge(self, level: int, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([upsampled, skip], dim=1) if level in self.skips else upsampled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        e1 = self.enc1(x)  # (N, c1, S, S)
        e2 = self.enc2(self.pool(e1))  # (N, c2, S/2, S/2)
        e3 = self.enc3(self.pool(e2))  # (N, c3, S/4, S/4)
        b = self.bottleneck(self.pool(e3))  # (N, bottleneck, S/8, S/8)
        d3 = self.dec3(self._merge(3, self.up3(b), e3))  # (N, c3, S/4, S/4)
        d2 = self.dec2(self._merge(2, self.up2(d3), e2))  # (N, c2, S/2, S/2)
        d1 = self.dec1(self._merge(1, self.up1(d2), e1))  # (N, c1, S, S)
        return torch.tanh(self.head(d1))  # (N, 3, S, S) in [-1, 1]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class DiscriminativeDetector(nn.Module):
    """DRAEM-style detector: the autoencoder removes anomalies, a segmentation head finds them.

    ``forward(x)`` returns ``(reconstruction, logits)``: (N, 3, S, S) in [-1, 1] and the
    head's anomaly logits (N, 1, S, S) from the input and its reconstruction side by side.

    >>> from anomaly_spotter.discriminative import SegmentationHead
    >>> detector = DiscriminativeDetector(AutoencoderUNetLite(8, 16, image_size=32), SegmentationHead(4, 2))
    >>> [tuple(t.shape) for t in detector(torch.zeros(2, 3, 32, 32))]
    [(2, 3, 32, 32), (2, 1, 32, 32)]
    """

    def __init__(self, reconstructor: AutoencoderUNetLite, head: nn.Module) -> None:
        super().__init__()
        self.reconstructor = reconstructor
        self.head = head
        self.image_size = reconstructor.image_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction = self.reconstructor(x)  # (N, 3, S, S)
        return reconstruction, self.head(x, reconstruction)  # logits (N, 1, S, S)


AnomalyModel = AutoencoderUNetLite | DiscriminativeDetector


def split_output(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(reconstruction, logits or None)`` from either model's ``forward`` output."""
    if isinstance(output, (tuple, list)):
        return output[0], output[1]
    return output, None


def architecture(config: ModelConfig, image_size: int) -> dict[str, Any]:
    """What :func:`model_from_architecture` needs, stored in ``model.pt`` so the file rebuilds itself."""
    arch: dict[str, Any] = {
        "kind": config.kind,
        "base_channels": config.base_channels,
        "bottleneck_channels": config.bottleneck_channels,
        "skips": list(config.skips),
        "image_size": image_size,
    }
    if config.kind == "discriminative":
        arch.update(head_channels=config.head_channels, head_depth=config.head_depth)
    return arch


def model_from_architecture(arch: dict[str, Any]) -> AnomalyModel:
    """The (untrained) model an :func:`architecture` dict describes."""
    reconstructor = AutoencoderUNetLite(
        base_channels=arch["base_channels"],
        bottleneck_channels=arch["bottleneck_channels"],
        skips=tuple(arch["skips"]),
        image_size=arch["image_size"],
    )
    kind = arch.get("kind")
    if kind == "reconstruction":
        return reconstructor
    if kind != "discriminative":
        raise UserError(f"unknown model kind {kind!r} in a model file; it was written by another version, retrain it with `dvc repro`")
    from anomaly_spotter.discriminative import SegmentationHead

    return DiscriminativeDetector(reconstructor, SegmentationHead(arch["head_channels"], arch["head_depth"]))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[AnomalyModel, dict[str, Any]]:
    """Rebuild a trained model from ``models/<category>/model.pt`` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing; run `dvc repro` (or `dvc pull`) to create it")
    payload = torch.load(path, map_location=device, weights_only=True)
    model = model_from_architecture(payload["architecture"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload
