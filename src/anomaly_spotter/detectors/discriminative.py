"""``model.kind: discriminative``: DRAEM-style, an autoencoder plus a segmentation head, and its loss.

The reconstruction autoencoder (:mod:`anomaly_spotter.detectors.autoencoder`) turns an image into its
"normal" version; :class:`SegmentationHead` looks at both side by side and predicts, per pixel,
whether the two differ because of a defect. It is trained on synthetic anomalies
(:mod:`anomaly_spotter.training.pasted_anomalies`) with :class:`SegmentationLoss`.

Shapes for a 128 px input, ``base_channels=16``, ``depth=3``::

    image, reconstruction  (N, 3, 128, 128) each, in [-1, 1]
    x        (N, 6, 128, 128)    concat(image, reconstruction)
    enc0     (N, 16, 128, 128)   double conv
    enc1     (N, 32, 64, 64)     maxpool + double conv
    enc2     (N, 64, 32, 32)     maxpool + double conv
    bottom   (N, 128, 16, 16)    maxpool + double conv
    dec2     (N, 64, 32, 32)     bilinear x2 + enc2 skip + double conv
    dec1     (N, 32, 64, 64)     bilinear x2 + enc1 skip + double conv
    dec0     (N, 16, 128, 128)   bilinear x2 + enc0 skip + double conv
    logits   (N, 1, 128, 128)    conv1x1, no activation

About 0.49 M parameters. Unlike the autoencoder this head keeps every skip connection: it must
localise defects to the pixel, and it cannot "copy the defect away" the way an autoencoder can.

Example:
    >>> import torch
    >>> head = SegmentationHead(base_channels=16, depth=3)
    >>> image = torch.zeros(2, 3, 64, 64)
    >>> logits = head(image, image)
    >>> logits.shape
    torch.Size([2, 1, 64, 64])
    >>> loss, parts = SegmentationLoss(focal_weight=1.0, dice_weight=1.0)(logits, torch.zeros(2, 64, 64))
    >>> sorted(parts)
    ['dice', 'focal']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_spotter.config import LossConfig, ScoreConfig
from anomaly_spotter.detectors.anomaly_map import head_map
from anomaly_spotter.detectors.autoencoder import AutoencoderUNetLite, double_conv, reconstruction_map
from anomaly_spotter.detectors.base import RECONSTRUCTING_OUTPUTS, GradientDetector
from anomaly_spotter.detectors.losses import ReconstructionLoss

if TYPE_CHECKING:
    from anomaly_spotter.config import Params


class SegmentationHead(nn.Module):
    """Small U-Net: input concat(image, reconstruction) (N, 6, S, S) in [-1,1] -> logits (N, 1, S, S).

    Args:
        base_channels: channels of the full-resolution level; they double at each downsampling.
        depth: number of downsamplings (the bottleneck is at 1 / 2**depth resolution). Any side
            of at least 2**depth pixels works: upsampled features are resized to their skip's size.
    """

    def __init__(self, base_channels: int, depth: int) -> None:
        # model.head_channels and model.head_depth, validated by config: built as given.
        super().__init__()
        self.base_channels = base_channels
        self.depth = depth
        channels = [base_channels * 2**level for level in range(depth + 1)]  # last: the bottleneck
        self.encoders = nn.ModuleList(
            double_conv(6 if level == 0 else channels[level - 1], channels[level]) for level in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(channels[depth - 1], channels[depth])
        # decoders[level] takes the upsampled level + 1 features and the level's skip.
        self.decoders = nn.ModuleList(
            double_conv(channels[level + 1] + channels[level], channels[level]) for level in range(depth)
        )
        self.head = nn.Conv2d(channels[0], 1, 1)

    def check_inputs(self, image: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """Raise ``ValueError`` unless both are float (N, 3, S, S) of the same shape, S >= 2**depth."""
        for name, tensor in (("image", image), ("reconstruction", reconstruction)):
            if tensor.dim() != 4:
                raise ValueError(
                    f"{name} must be a batch (N, 3, S, S), got rank {tensor.dim()} shape {tuple(tensor.shape)}"
                )
            if tensor.shape[1] != 3:
                raise ValueError(f"{name} must have 3 (RGB) channels, got {tensor.shape[1]}")
            if not tensor.is_floating_point():
                raise ValueError(f"{name} must be a float tensor in [-1, 1], got {tensor.dtype}")
        if image.shape != reconstruction.shape:
            raise ValueError(
                f"image and reconstruction must have the same shape, got {tuple(image.shape)} and "
                f"{tuple(reconstruction.shape)}"
            )
        if min(image.shape[2:]) < 2**self.depth:
            raise ValueError(
                f"images must be at least {2**self.depth} px per side for depth {self.depth}, "
                f"got {image.shape[2]}x{image.shape[3]}"
            )

    def forward(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        self.check_inputs(image, reconstruction)
        x = torch.cat([image, reconstruction], dim=1)  # (N, 6, S, S)
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))  # (N, c * 2**level, S / 2**level, ...)
            skips.append(x)
        x = self.bottleneck(self.pool(x))  # (N, c * 2**depth, S / 2**depth, ...)
        for level in reversed(range(self.depth)):
            skip = skips[level]
            # Resizing to the skip's exact size (not a fixed x2) handles sides that are not
            # multiples of 2**depth, where max pooling rounded down.
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = self.decoders[level](torch.cat([x, skip], dim=1))  # (N, c * 2**level, ...)
        return self.head(x)  # (N, 1, S, S) raw logits


class SegmentationLoss(nn.Module):
    """focal (gamma=2, optional alpha) + Dice on the anomaly mask; returns (loss, {"focal": float, "dice": float}).

    * Focal: ``mean(alpha_t * (1 - p_t)**gamma * BCE)`` over all pixels, with BCE computed from
      the logits (``binary_cross_entropy_with_logits``) and ``p_t = exp(-BCE)``, so it stays
      finite for any logit. ``focal_alpha`` weights the anomalous class (``1 - alpha`` the normal
      one); ``None`` weights both by 1.
    * Dice: ``1 - (2 * sum(p * m) + eps) / (sum(p) + sum(m) + eps)`` over the whole batch at once
      with ``p = sigmoid(logits)``; per-image Dice would be undefined for the many good images
      (empty masks), batch Dice is ~0 when an empty mask meets a confident-negative prediction.

    Total: ``focal_weight * focal + dice_weight * dice`` (``loss.focal`` and ``loss.dice``, validated
    by config; the pipeline passes them, see :class:`DraemLoss`).
    """

    def __init__(
        self,
        *,
        focal_weight: float,
        dice_weight: float,
        focal_gamma: float = 2.0,  # the focal loss paper's choice, kept by DRAEM
        focal_alpha: float | None = None,
        dice_smooth: float = 1.0,
    ) -> None:
        super().__init__()
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma!r}")
        if focal_alpha is not None and not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha must be None or in [0, 1], got {focal_alpha!r}")
        if dice_smooth <= 0:
            raise ValueError(f"dice_smooth must be > 0, got {dice_smooth!r}")
        self.focal_weight = float(focal_weight)
        self.focal_gamma = float(focal_gamma)
        self.dice_weight = float(dice_weight)
        self.focal_alpha = focal_alpha
        self.dice_smooth = float(dice_smooth)

    def forward(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        sum_over_batch: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``logits`` (N, 1, S, S) raw; ``mask`` (N, 1, S, S) or (N, S, S) in {0, 1}.

        ``sum_over_batch`` turns this batch's Dice sums into the global batch's when the batch is
        split over processes (a differentiable all-reduce, :func:`distributed.all_reduce_sum`):
        Dice is a ratio of sums, so unlike the focal mean it cannot be averaged per process.
        """
        if logits.dim() != 4 or logits.shape[1] != 1:
            raise ValueError(f"logits must be (N, 1, S, S), got {tuple(logits.shape)}")
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (N, S, S) -> (N, 1, S, S)
        if mask.shape != logits.shape:
            raise ValueError(
                f"mask must be (N, 1, S, S) or (N, S, S) matching logits {tuple(logits.shape)}, got {tuple(mask.shape)}"
            )
        logits = logits.float()  # half-precision logits would overflow in exp / sums
        target = mask.to(dtype=logits.dtype, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (N, 1, S, S)
        p_true = torch.exp(-bce)  # probability given to the correct class
        focal_map = (1.0 - p_true).pow(self.focal_gamma) * bce
        if self.focal_alpha is not None:
            focal_map = (self.focal_alpha * target + (1.0 - self.focal_alpha) * (1.0 - target)) * focal_map
        focal = focal_map.mean()
        probability = torch.sigmoid(logits)
        sums = torch.stack([(probability * target).sum(), probability.sum(), target.sum()])  # overlap, |p|, |m|
        if sum_over_batch is not None:
            sums = sum_over_batch(sums)
        overlap, predicted, actual = sums.unbind()
        dice = 1.0 - (2.0 * overlap + self.dice_smooth) / (predicted + actual + self.dice_smooth)
        total = self.focal_weight * focal + self.dice_weight * dice
        return total, {"focal": float(focal.detach()), "dice": float(dice.detach())}


class DraemLoss(nn.Module):
    """The discriminative kind's objective: ``params.loss`` reconstruction terms + :class:`SegmentationLoss`."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.reconstruction = ReconstructionLoss(config)
        self.segmentation = SegmentationLoss(focal_weight=config.focal, dice_weight=config.dice)

    def forward(
        self,
        output: tuple[torch.Tensor, torch.Tensor],
        target: torch.Tensor,
        mask: torch.Tensor,
        sum_over_batch: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        reconstruction, logits = output
        loss, parts = self.reconstruction(reconstruction, target, mask)
        segmentation, segmentation_parts = self.segmentation(logits.float(), mask, sum_over_batch)
        return loss + segmentation, {**parts, **segmentation_parts}


class DiscriminativeDetector(GradientDetector):
    """DRAEM-style detector: the autoencoder removes anomalies, a segmentation head finds them.

    ``forward(x)`` returns ``(reconstruction, logits)``: (N, 3, S, S) in [-1, 1] and the
    head's anomaly logits (N, 1, S, S) from the input and its reconstruction side by side.

    >>> detector = DiscriminativeDetector(AutoencoderUNetLite(8, 16, skips=(), image_size=32), SegmentationHead(4, 2))
    >>> [tuple(t.shape) for t in detector(torch.zeros(2, 3, 32, 32))]
    [(2, 3, 32, 32), (2, 1, 32, 32)]
    """

    kind = "discriminative"
    map_kinds = ("head", "l2", "ssim", "combined")  # the head's map first; the reconstruction's for comparison
    onnx_outputs = RECONSTRUCTING_OUTPUTS

    @classmethod
    def param_problems(cls, params: Params) -> list[str]:
        problems = AutoencoderUNetLite.param_problems(params)
        if params.anomalies.probability <= 0:
            problems.append(
                "anomalies.probability: model.kind discriminative learns from synthetic anomalies; "
                "set it > 0 (e.g. 0.5)"
            )
        if params.loss.focal + params.loss.dice <= 0:
            problems.append("loss: model.kind discriminative needs focal or dice > 0")
        return problems

    def __init__(self, reconstructor: AutoencoderUNetLite, head: SegmentationHead) -> None:
        super().__init__()
        self.reconstructor = reconstructor
        self.head = head
        self.image_size = reconstructor.image_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction = self.reconstructor(x)  # (N, 3, S, S)
        return reconstruction, self.head(x, reconstruction)  # logits (N, 1, S, S)

    # -- the Detector interface -----------------------------------------------------------------
    @classmethod
    def from_params(cls, params: Params) -> DiscriminativeDetector:
        return cls(
            AutoencoderUNetLite.from_params(params),
            SegmentationHead(params.model.head_channels, params.model.head_depth),
        )

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> DiscriminativeDetector:
        return cls(
            AutoencoderUNetLite.from_architecture(arch), SegmentationHead(arch["head_channels"], arch["head_depth"])
        )

    def architecture(self) -> dict[str, Any]:
        return {
            **self.reconstructor.architecture(),
            "kind": self.kind,
            "head_channels": self.head.base_channels,
            "head_depth": self.head.depth,
        }

    @classmethod
    def training_loss(cls, params: Params) -> DraemLoss:
        """Reconstruction loss against the clean image plus focal + Dice on the pasted mask."""
        return DraemLoss(params.loss)

    def anomaly_maps(
        self, images: torch.Tensor, output: tuple[torch.Tensor, torch.Tensor], config: ScoreConfig
    ) -> torch.Tensor:
        reconstruction, logits = output
        kind = self.map_kind(config.map)
        if kind == "head":
            return head_map(logits, smoothing_sigma=config.smoothing_sigma)
        return reconstruction_map(images, reconstruction, kind, config)

    def reconstruction(self, output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return output[0]
