"""PatchCore: a memory bank of pretrained patch features, scored by nearest-neighbour distance.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022). Nothing is
trained: a frozen ImageNet backbone (:mod:`anomaly_spotter.detectors.backbones`) describes every
patch of every normal training image, a greedy coreset (:mod:`anomaly_spotter.detectors.coreset`)
keeps ``model.coreset_ratio`` of those descriptions as the memory bank, and a test patch is as
anomalous as it is far from its nearest bank vector. The bank is built by
:mod:`anomaly_spotter.training.memory_bank`.

Shapes for a 256 px input, ``efficientnet_lite0``, ``layers=(2, 3)``, ``patch_window=3``::

    images        (N, 3, 256, 256)   in [-1, 1]
    level 2       (N, 40, 32, 32)    stride 8  -> 3x3 average (stride 1, zero "same" padding)
    level 3       (N, 112, 16, 16)   stride 16 -> 3x3 average -> bilinear to 32x32
    features      (N, 152, 32, 32)   concatenated: one 152-d descriptor per stride-8 patch
    distances     (N, 32, 32)        Euclidean distance to the nearest of the K bank vectors
    weights       (N,)               the paper's image-score reweighting (1 when off)
    anomaly maps  (N, 256, 256)      distances, bilinear to 256 px, Gaussian-smoothed
    scores        (N,)               image_score of the distances x weights

``forward`` returns ``(distances, weights)``; :meth:`PatchCore.anomaly_maps` and
:meth:`PatchCore.image_scores` turn that into maps and scores, and
:meth:`~anomaly_spotter.detectors.base.Detector.onnx_forward` does all three in one traceable
graph (the memory bank becomes a constant of the ONNX file).

``model.pt`` holds the cut backbone's weights and the bank, so loading a fitted detector reads
no weight file: ``PatchCore.from_architecture(arch)`` + ``load_state_dict``.

Example:
    >>> import torch
    >>> detector = PatchCore("efficientnet_lite0", (2, 3), 64)
    >>> features = detector.patch_features(torch.zeros(2, 3, 64, 64))
    >>> tuple(features.shape)
    (2, 152, 8, 8)
    >>> detector.set_memory_bank(features[0].flatten(1).T)  # 64 patches of the first image
    >>> distances, weights = detector(torch.zeros(2, 3, 64, 64))
    >>> tuple(distances.shape), float(distances.max()) < 0.5  # the bank's own patches: ~0
    ((2, 8, 8), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_spotter.detectors import anomaly_map
from anomaly_spotter.detectors.backbones import FeatureExtractor, weight_file
from anomaly_spotter.detectors.base import MAP_OUTPUTS, MemoryBankDetector
from anomaly_spotter.tensors import to_tensor

if TYPE_CHECKING:
    from anomaly_spotter.config import Params, ScoreConfig

GRID_STRIDE = 8  # every level is resized to the stride-8 grid: one descriptor per 8x8 px patch
BANK_CHUNK = 2048  # bank vectors per distance block when scoring
QUERY_CHUNK = 2048  # patches per distance block in eager mode: a 2048 x 2048 block (16 MB) stays in cache
# Images per backbone call in eager mode, as pixels: 2 images of 256 px. The activations of a few
# images stay in cache; on 2 cores lite0 ran 211 images/s in pairs but 56 in batches of 32.
FEATURE_PIXELS = 2 * 256 * 256
# Border cells average in the zero padding (as anomalib does): measured on magnetic_tile, averaging
# only the cells that exist lost 0.02-0.04 image AUROC and 0.025 pixel AUROC (bench/patchcore_tuning.py).
COUNT_BORDER_ZEROS = True


class PatchCore(MemoryBankDetector):
    """PatchCore over a frozen backbone; see the module docstring for the shapes.

    Args:
        backbone: one of :data:`anomaly_spotter.config.BACKBONES`.
        layers: feature levels (level k at stride 2**(k+1)), e.g. (2, 3).
        image_size: input side S (the backbone's padding is fixed for it).
        patch_window: odd side of the average that aggregates each level's features over
            neighbouring cells (stride 1, same padding, border cells average what exists).
        num_neighbours: b of the paper's image-score reweighting; 0 or 1 = plain score.
        bank_size: rows of the memory bank buffer (0 until fitted; from ``model.pt`` when loading).
        pretrained: read the backbone's ImageNet weights; ``False`` when a state dict follows.
        weights_file, weights_sha256: the backbone's weight file, recorded in :meth:`architecture`
            (filled in from the file when ``pretrained``).
    """

    kind: ClassVar[str] = "patchcore"
    map_kinds: ClassVar[tuple[str, ...]] = ("distance",)
    onnx_outputs: ClassVar[tuple[str, ...]] = MAP_OUTPUTS

    def __init__(
        self,
        backbone: str,
        layers: Sequence[int],
        image_size: int,
        *,
        patch_window: int = 3,
        num_neighbours: int = 9,
        bank_size: int = 0,
        pretrained: bool = True,
        weights_file: str = "",
        weights_sha256: str = "",
    ) -> None:
        super().__init__()
        self.backbone = FeatureExtractor(backbone, layers, image_size=image_size, pretrained=pretrained)
        if pretrained:
            weights = weight_file(backbone)  # cached: the extractor just read (and hashed) it
            weights_file, weights_sha256 = weights.name, weights.sha256
        self.backbone_name = backbone
        self.layers = self.backbone.levels
        self.image_size = int(image_size)
        self.patch_window = int(patch_window)
        self.num_neighbours = int(num_neighbours)
        self.weights_file = weights_file
        self.weights_sha256 = weights_sha256
        self.feature_dim = int(sum(self.backbone.channels))
        self.grid_size = self._grid_size(self.image_size)
        # float32 buffer: saved in the state dict, a constant in the ONNX graph.
        self.register_buffer("memory_bank", torch.zeros(int(bank_size), self.feature_dim))

    @staticmethod
    def _grid_size(side: int) -> int:
        """Side of the stride-8 feature map: ceil(S / 8) for "same"-padded efficientnet and ResNet alike."""
        for _ in range(round(math.log2(GRID_STRIDE))):  # stride-2 stages, each rounding up
            side = -(-side // 2)
        return side

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def param_problems(cls, params: Params) -> list[str]:
        model, problems = params.model, []
        if model.patch_window % 2 == 0:
            problems.append(
                f"model.patch_window: must be odd (a window centred on each feature cell), got {model.patch_window}"
            )
        layers = model.layers
        if not layers or any(level not in (1, 2, 3, 4) for level in layers) or len(set(layers)) != len(layers):
            problems.append(
                f"model.layers: list distinct feature levels from 1-4 (level k at stride 2**(k+1)), got {list(layers)}"
            )
        return problems

    @classmethod
    def from_params(cls, params: Params) -> PatchCore:
        model = params.model
        return cls(
            model.backbone,
            model.layers,
            params.preprocess.image_size,
            patch_window=model.patch_window,
            num_neighbours=model.num_neighbours,
        )

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> PatchCore:
        if arch.get("kind") != cls.kind:
            raise ValueError(f"architecture is for model.kind {arch.get('kind')!r}, not {cls.kind!r}")
        detector = cls(
            arch["backbone"],
            arch["layers"],
            arch["image_size"],
            patch_window=arch["patch_window"] if "patch_window" in arch else arch["neighbourhood"],  # older model.pt
            num_neighbours=arch["num_neighbours"],
            bank_size=arch["bank_size"],
            pretrained=False,
            weights_file=arch["weights_file"],
            weights_sha256=arch["weights_sha256"],
        )
        if detector.feature_dim != arch["feature_dim"]:
            raise ValueError(
                f"architecture says feature_dim {arch['feature_dim']}, but {arch['backbone']} levels {arch['layers']} "
                f"give {detector.feature_dim}"
            )
        return detector

    def architecture(self) -> dict[str, Any]:
        """Plain ints, strs and lists only, so ``model.pt`` loads with ``weights_only=True``."""
        return {
            "kind": self.kind,
            "backbone": self.backbone_name,
            "layers": [int(level) for level in self.layers],
            "patch_window": self.patch_window,
            "num_neighbours": self.num_neighbours,
            "image_size": self.image_size,
            "feature_dim": self.feature_dim,
            "bank_size": int(self.memory_bank.shape[0]),
            "weights_file": self.weights_file,
            "weights_sha256": self.weights_sha256,
        }

    def describe(self) -> str:
        return f"{self.backbone_name} {list(self.layers)}"

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        """Replace the memory bank with ``bank`` (K, feature_dim), stored as float32."""
        if bank.ndim != 2 or bank.shape[1] != self.feature_dim or bank.shape[0] == 0:
            raise ValueError(f"bank must be (K >= 1, {self.feature_dim}), got {tuple(bank.shape)}")
        self.memory_bank = bank.detach().to(dtype=torch.float32, device=self.memory_bank.device).contiguous()

    # -- features and distances -----------------------------------------------------------------
    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch descriptors (N, feature_dim, g, g) on the stride-8 grid (g = ceil(S / 8)) of images (N, 3, S, S).

        Eager calls run the backbone on a few images at a time (:data:`FEATURE_PIXELS`); a traced
        (ONNX) call runs the whole batch at once, so the graph keeps a dynamic batch axis.
        """
        step = max(1, FEATURE_PIXELS // (images.shape[-1] * images.shape[-2]))
        if not torch.jit.is_tracing() and images.shape[0] > step:
            return torch.cat([self._patch_features(part) for part in images.split(step)])
        return self._patch_features(images)

    def _patch_features(self, images: torch.Tensor) -> torch.Tensor:
        grid = (self.grid_size, self.grid_size)
        k = self.patch_window
        levels = []
        for feature in self.backbone(images):  # (N, C_l, S / stride_l, ...)
            if k > 1:
                feature = F.avg_pool2d(feature, k, stride=1, padding=k // 2, count_include_pad=COUNT_BORDER_ZEROS)
            # Python ints: the input side is fixed, so in an ONNX trace the pooling kernel must be a constant
            # (a traced shape made a stride-4 level, model.layers [1, 2, 3], fail to export).
            height, width = (int(side) for side in feature.shape[-2:])
            if (height, width) != grid:
                if height > grid[0] and height % grid[0] == 0 and width % grid[1] == 0:
                    feature = F.avg_pool2d(feature, (height // grid[0], width // grid[1]))  # finer level: average down
                else:
                    feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
            levels.append(feature)
        return torch.cat(levels, dim=1)  # (N, D, g, g)

    def _squared_distances(self, queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        """(Q, K) squared Euclidean distances, |q|^2 - 2 q.b + |b|^2 with one matmul, clamped at 0."""
        cross = torch.addmm(bank.square().sum(1).unsqueeze(0), queries, bank.T, alpha=-2.0)  # (Q, K)
        return (cross + queries.square().sum(1, keepdim=True)).clamp_min(0.0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, S, S) in [-1, 1] -> (distances (N, g, g), weights (N,)), g = ceil(S / 8).

        ``distances``: each patch's Euclidean distance to its nearest bank vector. ``weights``:
        the image-score reweighting of :meth:`image_scores` (ones when ``num_neighbours`` <= 1).
        """
        bank = self.memory_bank  # (K, D)
        if bank.shape[0] == 0:
            raise RuntimeError("PatchCore has an empty memory bank: fit it (PatchCore.fit) or load a fitted state dict")
        features = self.patch_features(images)  # (N, D, g, g)
        g = self.grid_size
        queries = features.permute(0, 2, 3, 1).reshape(-1, self.feature_dim)  # (N*g*g, D)
        if torch.jit.is_tracing():
            nearest_sq = self._nearest_squared(queries)  # the batch axis stays dynamic
        else:
            nearest_sq = torch.cat([self._nearest_squared(block) for block in queries.split(QUERY_CHUNK)])
        distances = nearest_sq.sqrt().reshape(-1, g, g)  # (N, g, g)
        return distances, self._reweighting(distances, queries.reshape(-1, g * g, self.feature_dim))

    def _nearest_squared(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q,) squared distance from each query (Q, D) to its nearest bank vector, chunked over the bank."""
        bank = self.memory_bank
        nearest: torch.Tensor | None = None
        for lo in range(0, bank.shape[0], BANK_CHUNK):  # a fixed loop: the bank size is a constant
            chunk = bank[lo : lo + BANK_CHUNK]  # (<= BANK_CHUNK, D)
            cross = torch.addmm(
                chunk.square().sum(1).unsqueeze(0), queries, chunk.T, alpha=-2.0
            )  # (Q, chunk) |b|^2 - 2 q.b
            best = cross.amin(dim=1)
            nearest = best if nearest is None else torch.minimum(nearest, best)
        assert nearest is not None  # a fitted bank is never empty
        return (nearest + queries.square().sum(1)).clamp_min(0.0)

    def _reweighting(self, distances: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """The paper's weight (N,) for each image's most anomalous patch (see :meth:`image_scores`)."""
        b = min(self.num_neighbours, int(self.memory_bank.shape[0]))
        if b <= 1:
            return torch.ones_like(distances[:, 0, 0])
        bank = self.memory_bank
        worst = distances.flatten(1).argmax(dim=1)  # (N,) the max patch m_test*
        index = worst.view(-1, 1, 1).expand(-1, 1, queries.shape[2])
        worst_feature = queries.gather(1, index).squeeze(1)  # (N, D)
        to_bank = self._squared_distances(worst_feature, bank).sqrt()  # (N, K) |m_test* - m|
        nearest = to_bank.argmin(dim=1)  # (N,) its nearest bank vector m*
        score = to_bank.gather(1, nearest.unsqueeze(1)).squeeze(1)  # (N,) s* = |m_test* - m*|
        support_sq = self._squared_distances(bank.index_select(0, nearest), bank)  # (N, K) |m* - m|^2
        support = support_sq.topk(b, dim=1, largest=False).indices  # (N, b) N_b(m*), m* itself first
        logits = to_bank.gather(1, support)  # (N, b) |m_test* - m| for m in N_b(m*)
        return 1.0 - torch.exp(score - torch.logsumexp(logits, dim=1))

    # -- scoring --------------------------------------------------------------------------------
    def anomaly_maps(self, images: torch.Tensor, output: Any, config: ScoreConfig) -> torch.Tensor:
        """(N, S, S) float32: the patch distances, bilinear to the input side, smoothed by ``smoothing_sigma`` px."""
        self.map_kind(config.map)
        distances = output[0]  # (N, g, g)
        size = (images.shape[-2], images.shape[-1])
        maps = F.interpolate(distances.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        return anomaly_map.smooth(maps, config.smoothing_sigma)

    def image_scores(self, maps: torch.Tensor, output: Any, config: ScoreConfig) -> torch.Tensor:
        """(N,): ``score.image_score`` of the raw patch distances, times the paper's reweighting.

        With ``image_score: max`` this is PatchCore's score (paper, eq. 7):
        ``s = (1 - exp|m_test* - m*| / sum_{m in N_b(m*)} exp|m_test* - m|) * s*``, where
        m_test* is the image's patch farthest from the bank, m* its nearest bank vector,
        s* = |m_test* - m*|, and N_b(m*) the b = ``num_neighbours`` bank vectors nearest to m*
        (m* itself included, as in anomalib). With ``topk_mean`` the mean of the top
        ``topk_percent`` % patch distances replaces s* (same weight). ``num_neighbours`` 0 or 1
        gives weight 1 (a softmax over one neighbour would be 1 - 1 = 0).

        The raw (N, g, g) distances are used rather than ``maps``: upsampling and smoothing would
        only blur the one patch that decides the paper's score.
        """
        distances, weights = output
        base = anomaly_map.image_scores(distances, reduction=config.image_score, topk_percent=config.topk_percent)
        return base * weights

    # -- fitting --------------------------------------------------------------------------------
    @torch.inference_mode()
    def extract(self, images: np.ndarray, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """Patch features (N * g * g, D) float32 of uint8 images (N, S, S, 3), row = (image, y, x)."""
        device = device or self.memory_bank.device
        count, g = len(images), self.grid_size
        out = torch.empty(count * g * g, self.feature_dim, device=device)
        for lo in range(0, count, batch_size):
            x = to_tensor(np.asarray(images[lo : lo + batch_size])).to(device)  # (B, 3, S, S)
            features = self.patch_features(x)  # (B, D, g, g)
            out[lo * g * g : (lo + len(x)) * g * g] = features.permute(0, 2, 3, 1).reshape(-1, self.feature_dim)
        return out


__all__ = ["PatchCore"]
