"""``model.kind: reconstruction``: the U-Net autoencoder, scored by its reconstruction error.

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
    >>> model = AutoencoderUNetLite(base_channels=32, bottleneck_channels=512, skips=(), image_size=128)
    >>> model(torch.zeros(2, 3, 128, 128)).shape
    torch.Size([2, 3, 128, 128])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anomaly_spotter.config import ScoreConfig
from anomaly_spotter.detectors.anomaly_map import anomaly_map
from anomaly_spotter.detectors.base import RECONSTRUCTING_OUTPUTS, GradientDetector
from anomaly_spotter.detectors.losses import ReconstructionLoss

if TYPE_CHECKING:
    from anomaly_spotter.config import Params

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


def reconstruction_map(
    images: torch.Tensor, reconstruction: torch.Tensor, kind: str, config: ScoreConfig
) -> torch.Tensor:
    """The reconstruction-error map ``kind`` (l2 | ssim | combined) of ``config``: (N, S, S) float32."""
    return anomaly_map(
        images,
        reconstruction,
        kind=kind,
        ssim_window=config.ssim_window,
        combined_ssim_weight=config.combined_ssim_weight,
        smoothing_sigma=config.smoothing_sigma,
    )


class AutoencoderUNetLite(GradientDetector):
    """U-Net-shaped convolutional autoencoder with selectable skip connections.

    Args:
        base_channels: channels of the first level; they double at each downsampling.
        bottleneck_channels: channels at 1/8 resolution.
        skips: levels (1 = full resolution, 2, 3) whose encoder features are concatenated
            into the decoder.
        image_size: expected input side (for input validation only).
    """

    kind = "reconstruction"
    map_kinds = ("ssim", "l2", "combined")  # ssim first: it won the ablation (docs/detectors.md)
    onnx_outputs = RECONSTRUCTING_OUTPUTS

    @classmethod
    def param_problems(cls, params: Params) -> list[str]:
        side = params.preprocess.image_size
        if side % 2**DOWNSAMPLINGS:
            return [
                f"preprocess.image_size: {side} must be divisible by {2**DOWNSAMPLINGS} "
                f"for model.kind {params.model.kind} (it is halved {DOWNSAMPLINGS} times)"
            ]
        return []

    def __init__(self, base_channels: int, bottleneck_channels: int, skips: Sequence[int], image_size: int) -> None:
        # Validated by config (ranges, skip levels) and param_problems (the side): built as given.
        super().__init__()
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
            raise ValueError(
                f"expected a batch of shape (N, 3, {self.image_size}, {self.image_size}), "
                f"got rank {x.dim()} shape {tuple(x.shape)}"
            )
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 (RGB) channels, got {x.shape[1]}; replicate grayscale to 3 channels")
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got {x.shape[2]}x{x.shape[3]}; "
                "resize in preprocessing"
            )
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

    # -- the Detector interface -----------------------------------------------------------------
    @classmethod
    def from_params(cls, params: Params) -> AutoencoderUNetLite:
        config = params.model
        return cls(config.base_channels, config.bottleneck_channels, config.skips, params.preprocess.image_size)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> AutoencoderUNetLite:
        return cls(arch["base_channels"], arch["bottleneck_channels"], tuple(arch["skips"]), arch["image_size"])

    def architecture(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "base_channels": self.enc1[0].out_channels,
            "bottleneck_channels": self.bottleneck[0].out_channels,
            "skips": list(self.skips),
            "image_size": self.image_size,
        }

    @classmethod
    def training_loss(cls, params: Params) -> ReconstructionLoss:
        """The weighted reconstruction loss ``params.loss`` (against the clean image)."""
        return ReconstructionLoss(params.loss)

    def anomaly_maps(self, images: torch.Tensor, output: torch.Tensor, config: ScoreConfig) -> torch.Tensor:
        return reconstruction_map(images, output, self.map_kind(config.map), config)

    def reconstruction(self, output: torch.Tensor) -> torch.Tensor:
        return output


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
