"""PatchCore: a memory bank of pretrained patch features, scored by nearest-neighbour distance.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022). Nothing is
trained: a frozen ImageNet backbone (:mod:`anomaly_spotter.detectors.backbones`) describes every
patch of every normal training image, a greedy coreset keeps ``model.coreset_ratio`` of those
descriptions as the memory bank, and a test patch is as anomalous as it is far from its nearest
bank vector.

Shapes for a 256 px input, ``efficientnet_lite0``, ``layers=(2, 3)``, ``neighbourhood=3``::

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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_spotter import anomaly_map
from anomaly_spotter.config import ScoreConfig
from anomaly_spotter.detectors.backbones import FeatureExtractor, weight_file
from anomaly_spotter.detectors.base import MAP_OUTPUTS, Detector, FitResult, FitRun, save_model_file
from anomaly_spotter.errors import UserError

if TYPE_CHECKING:
    from anomaly_spotter.config import Params
    from anomaly_spotter.processed import ProcessedCategory

GRID_STRIDE = 8  # every level is resized to the stride-8 grid: one descriptor per 8x8 px patch
PROJECTION_DIM = 128  # the greedy coreset compares patches in a random projection this wide (paper: 128)
CANDIDATES = 256  # patches the greedy search tries per pass (see _greedy_indices: exact, just batched)
CENTRES_PER_PASS = 64  # most centres chosen per pass: batches the distance update into a GEMM
ROW_CHUNK = 65536  # patches per distance block in the coreset: bounds memory to ~17 MB per block
BANK_CHUNK = 2048  # bank vectors per distance block when scoring
QUERY_CHUNK = 2048  # patches per distance block in eager mode: a 2048 x 2048 block (16 MB) stays in cache
# Images per backbone call in eager mode, as pixels: 2 images of 256 px. The activations of a few
# images stay in cache; on 2 cores lite0 ran 211 images/s in pairs but 56 in batches of 32.
FEATURE_PIXELS = 2 * 256 * 256
RADIUS_CHUNK = 4096  # patches per exact nearest-neighbour block in coverage_radius
GROWTH_POINTS = 50  # points of the logged coreset-growth curve: enough to see where it flattens
SAMPLE_IMAGES = 4  # validation images in the logged map grid, as the autoencoders' reconstruction grid
# Border cells average in the zero padding (as anomalib does): measured on magnetic_tile, averaging
# only the cells that exist lost 0.02-0.04 image AUROC and 0.025 pixel AUROC (bench/patchcore_tuning.py).
COUNT_BORDER_ZEROS = True


# -- greedy coreset ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coreset:
    """A greedy k-center coreset of a feature set."""

    indices: torch.Tensor  # (K,) int64 rows of the features, in the order the greedy chose them
    radius: float  # max over all features of the distance to their nearest kept row (full space, exact)
    growth: tuple[float, ...] = ()  # covering radius (in the projection) after 1, 2, ... K-1 centres


def sparse_projection(dim_in: int, dim_out: int, generator: torch.Generator) -> torch.Tensor:
    """A (dim_in, dim_out) very sparse random projection (Li, Hastie & Church 2006).

    Entries are ``±sqrt(s / dim_out)`` with probability ``1 / (2 s)`` each and 0 otherwise,
    ``s = sqrt(dim_in)``: squared distances are preserved in expectation (Johnson-Lindenstrauss)
    at a fraction of a dense projection's cost.

    >>> p = sparse_projection(400, 128, torch.Generator().manual_seed(0))
    >>> tuple(p.shape), sorted(set(p.unique().abs().tolist()))[:1]
    ((400, 128), [0.0])
    """
    s = math.sqrt(dim_in)
    u = torch.rand(dim_in, dim_out, generator=generator, dtype=torch.float64)
    signs = (u < 0.5 / s).double() - (u > 1.0 - 0.5 / s).double()
    return (signs * math.sqrt(s / dim_out)).float()


def coreset_size(count: int, ratio: float) -> int:
    """Bank size for ``count`` patches: ``ceil(ratio * count)``, at least 1, at most ``count``.

    >>> coreset_size(1000, 0.01), coreset_size(50, 0.01), coreset_size(7, 1.0)
    (10, 1, 7)
    """
    return max(1, min(count, math.ceil(ratio * count - 1e-9)))  # epsilon: 0.07 * 100 is 7.000000000000001


def _greedy_indices(z: torch.Tensor, k: int, start: int, radii: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-center on rows of ``z`` (N, P) from row ``start``: (chosen (k,), nearest chosen (N,)).

    The textbook loop picks ``argmax(d)`` and then updates ``d = min(d, |z - c|)`` for all N rows:
    one memory-bound pass over z per centre (~30 ms for 580k x 128 floats here, 3 min for 1%).
    This gives the same centres in a few big GEMMs: ``d`` only ever decreases, so once the
    top-M rows are known, every other row's distance is at most the (M+1)-th value ``tau``.
    The greedy therefore continues exactly on the M candidates alone (updating just their
    distances) for as long as its best candidate is still >= ``tau``; then all N rows are
    updated at once with the centres chosen in that pass (one N x j GEMM). Already chosen rows
    are set to -inf so that duplicate patches are never chosen twice.

    ``radii``, when given, receives each chosen centre's distance to the ones chosen before it
    (after the first): the greedy's covering radius in the projection as the coreset grows.
    """
    n = z.shape[0]
    sq = z.square().sum(1)  # (N,) squared norms: |a - b|^2 = |a|^2 - 2 a.b + |b|^2
    dist = torch.full((n,), math.inf, dtype=z.dtype, device=z.device)  # squared distance to nearest centre
    nearest = torch.zeros(n, dtype=torch.long, device=z.device)  # index into `chosen`
    chosen: list[int] = []
    new = [start]
    while True:
        centres = z[new]  # (j, P)
        offset = len(chosen)
        for lo in range(0, n, ROW_CHUNK):
            rows = slice(lo, lo + ROW_CHUNK)
            block = torch.addmm(sq[new].unsqueeze(0), z[rows], centres.T, alpha=-2.0)  # (rows, j) = |c|^2 - 2 z.c
            best, which = block.min(dim=1)
            best += sq[rows]
            closer = best < dist[rows]
            dist[rows] = torch.where(closer, best, dist[rows])
            nearest[rows] = torch.where(closer, which + offset, nearest[rows])
        chosen += new
        dist[new] = -math.inf  # chosen: never again, even if a duplicate row ties at distance 0
        if len(chosen) >= k:
            return torch.tensor(chosen, dtype=torch.long), nearest
        m = min(CANDIDATES, n - len(chosen))  # m + 1 <= n: the (m+1)-th is a real row or a chosen one (-inf)
        top_values, top = torch.topk(dist, m + 1)
        tau = float(top_values[m])  # no row outside `top[:m]` is farther than this
        values, top = top_values[:m].clone(), top[:m]
        zc, sqc = z[top], sq[top]  # (M, P), (M,)
        new = []
        while len(new) < min(CENTRES_PER_PASS, k - len(chosen)):
            i = int(values.argmax())
            if float(values[i]) < tau:
                break  # a row outside the candidates may be farther now: update everything first
            new.append(int(top[i]))
            if radii is not None:
                radii.append(math.sqrt(max(float(values[i]), 0.0)))
            step = torch.addmv(sqc, zc, zc[i], alpha=-2.0).add_(sqc[i])  # (M,) squared distances to it
            values = torch.minimum(values, step)
            values[i] = -math.inf


def coverage_radius(features: torch.Tensor, bank: torch.Tensor, nearest: torch.Tensor | None = None) -> float:
    """max over rows of ``features`` (N, D) of the Euclidean distance to the nearest row of ``bank`` (K, D).

    Exact (float64 distances), without an N x K pass when ``nearest`` (N,) gives, for each row, a
    bank row that is close to it (the coreset's assignment): ``|x - bank[nearest[x]]|`` bounds
    each row's true distance from above, so only the rows whose bound exceeds the largest exact
    distance found so far are checked against the whole bank, in decreasing order of bound.

    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    >>> coverage_radius(x, x[:1])
    5.0
    """
    if nearest is None:
        nearest = torch.zeros(features.shape[0], dtype=torch.long, device=features.device)
    bounds = torch.zeros(features.shape[0], dtype=torch.float32, device=features.device)
    for lo in range(0, features.shape[0], ROW_CHUNK):
        rows = slice(lo, lo + ROW_CHUNK)
        bounds[rows] = torch.linalg.vector_norm(features[rows] - bank[nearest[rows]], dim=1)
    order = torch.argsort(bounds, descending=True, stable=True)
    bank64 = bank.double()
    bank_sq = bank64.square().sum(1)
    radius = 0.0
    slack = 1.0 + 1e-5  # the float32 bounds may sit a few ulps below the float64 truth
    for lo in range(0, len(order), RADIUS_CHUNK):
        if float(bounds[order[lo]]) * slack <= radius:
            break
        x = features[order[lo : lo + RADIUS_CHUNK]].double()  # (chunk, D)
        d2 = torch.addmm(bank_sq.unsqueeze(0), x, bank64.T, alpha=-2.0).add_(x.square().sum(1, keepdim=True))
        radius = max(radius, float(d2.amin(1).clamp_min(0.0).sqrt().max()))
    return radius


def greedy_coreset(features: torch.Tensor, ratio: float, seed: int, *, projection_dim: int = PROJECTION_DIM) -> Coreset:
    """The PatchCore coreset: greedy k-center (Gonzalez 1985) of ``features`` (N, D), K = ``coreset_size``.

    Deterministic given ``seed``: the first centre is a seeded random row, and distances are
    measured in a seeded :func:`sparse_projection` to ``projection_dim`` dimensions (none when
    D <= ``projection_dim``). Each step adds the row farthest from all chosen ones, so every
    row ends within the returned radius (computed exactly, in the full D dimensions) of the
    bank. Cost: about N * K * ``projection_dim`` multiply-adds, in GEMMs; memory linear in N.

    >>> x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    >>> core = greedy_coreset(x, 0.1, seed=0)
    >>> len(core.indices), len(set(core.indices.tolist()))
    (50, 50)
    >>> bool(torch.cdist(x, x[core.indices]).amin(1).max() <= core.radius + 1e-5)
    True
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) matrix, got shape {tuple(features.shape)}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    n, dim = features.shape
    k = coreset_size(n, ratio)
    if k == n:
        return Coreset(torch.arange(n), 0.0)
    generator = torch.Generator().manual_seed(int(seed))
    start = int(torch.randint(n, (1,), generator=generator))
    features = features.float()
    if dim > projection_dim:
        projected = features @ sparse_projection(dim, projection_dim, generator).to(features.device)  # (N, P)
    else:
        projected = features
    growth: list[float] = []
    indices, nearest = _greedy_indices(projected, k, start, growth)
    indices = indices.to(features.device)
    return Coreset(indices.cpu(), coverage_radius(features, features[indices], nearest), tuple(growth))


# -- the detector -----------------------------------------------------------------------------------
class PatchCore(Detector):
    """PatchCore over a frozen backbone; see the module docstring for the shapes.

    Args:
        backbone: one of :data:`anomaly_spotter.config.BACKBONES`.
        layers: feature levels (level k at stride 2**(k+1)), e.g. (2, 3).
        image_size: input side S (the backbone's padding is fixed for it).
        neighbourhood: odd side of the average that aggregates each level's features over
            neighbouring cells (stride 1, same padding, border cells average what exists).
        num_neighbours: b of the paper's image-score reweighting; 0 or 1 = plain score.
        bank_size: rows of the memory bank buffer (0 until fitted; from ``model.pt`` when loading).
        pretrained: read the backbone's ImageNet weights; ``False`` when a state dict follows.
        weights_file, weights_sha256: the backbone's weight file, recorded in :meth:`architecture`
            (filled in from the file when ``pretrained``).
    """

    kind: ClassVar[str] = "patchcore"
    onnx_outputs: ClassVar[tuple[str, ...]] = MAP_OUTPUTS

    def __init__(
        self,
        backbone: str,
        layers: Sequence[int],
        image_size: int,
        *,
        neighbourhood: int = 3,
        num_neighbours: int = 9,
        bank_size: int = 0,
        pretrained: bool = True,
        weights_file: str = "",
        weights_sha256: str = "",
    ) -> None:
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise UserError(f"model.neighbourhood must be an odd number >= 1 (a window centred on each cell), got {neighbourhood}")
        if num_neighbours < 0:
            raise UserError(f"model.num_neighbours must be >= 0, got {num_neighbours}")
        self.backbone = FeatureExtractor(backbone, layers, image_size=image_size, pretrained=pretrained)
        if pretrained:
            weights = weight_file(backbone)  # cached: the extractor just read (and hashed) it
            weights_file, weights_sha256 = weights.name, weights.sha256
        self.backbone_name = backbone
        self.layers = self.backbone.levels
        self.image_size = int(image_size)
        self.neighbourhood = int(neighbourhood)
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
    def from_params(cls, params: Params) -> PatchCore:
        model = params.model
        return cls(
            model.backbone,
            model.layers,
            params.preprocess.image_size,
            neighbourhood=model.neighbourhood,
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
            neighbourhood=arch["neighbourhood"],
            num_neighbours=arch["num_neighbours"],
            bank_size=arch["bank_size"],
            pretrained=False,
            weights_file=arch["weights_file"],
            weights_sha256=arch["weights_sha256"],
        )
        if detector.feature_dim != arch["feature_dim"]:
            raise ValueError(f"architecture says feature_dim {arch['feature_dim']}, but {arch['backbone']} levels {arch['layers']} give {detector.feature_dim}")
        return detector

    def architecture(self) -> dict[str, Any]:
        """Plain ints, strs and lists only, so ``model.pt`` loads with ``weights_only=True``."""
        return {
            "kind": self.kind,
            "backbone": self.backbone_name,
            "layers": [int(level) for level in self.layers],
            "neighbourhood": self.neighbourhood,
            "num_neighbours": self.num_neighbours,
            "image_size": self.image_size,
            "feature_dim": self.feature_dim,
            "bank_size": int(self.memory_bank.shape[0]),
            "weights_file": self.weights_file,
            "weights_sha256": self.weights_sha256,
        }

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
        k = self.neighbourhood
        levels = []
        for feature in self.backbone(images):  # (N, C_l, S / stride_l, ...)
            if k > 1:
                feature = F.avg_pool2d(feature, k, stride=1, padding=k // 2, count_include_pad=COUNT_BORDER_ZEROS)
            height, width = feature.shape[-2:]
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
        nearest = None
        for lo in range(0, bank.shape[0], BANK_CHUNK):  # a fixed loop: the bank size is a constant
            chunk = bank[lo : lo + BANK_CHUNK]  # (<= BANK_CHUNK, D)
            cross = torch.addmm(chunk.square().sum(1).unsqueeze(0), queries, chunk.T, alpha=-2.0)  # (Q, chunk) |b|^2 - 2 q.b
            best = cross.amin(dim=1)
            nearest = best if nearest is None else torch.minimum(nearest, best)
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
        from anomaly_spotter.data import to_tensor

        device = device or self.memory_bank.device
        count, g = len(images), self.grid_size
        out = torch.empty(count * g * g, self.feature_dim, device=device)
        for lo in range(0, count, batch_size):
            x = to_tensor(np.asarray(images[lo : lo + batch_size])).to(device)  # (B, 3, S, S)
            features = self.patch_features(x)  # (B, D, g, g)
            out[lo * g * g : (lo + len(x)) * g * g] = features.permute(0, 2, 3, 1).reshape(-1, self.feature_dim)
        return out

    @classmethod
    def fit(cls, data: ProcessedCategory, params: Params, run: FitRun) -> FitResult:
        """Extract the train patches, keep a greedy coreset as the bank, write ``model.pt`` and DVCLive.

        ``model.pt`` is byte-identical for identical data and params (fit timings go to DVCLive
        and the result's details, not into the file).
        """
        from dvclive import Live  # deferred: only fitting logs

        from anomaly_spotter.runtime import kernel_record, seed_everything, select_device
        from anomaly_spotter.scoring import score_images

        started = time.perf_counter()
        seed_everything(params.train.seed, params.train.num_threads)
        if data.image_size != params.preprocess.image_size:
            raise UserError(f"{data.root} holds {data.image_size} px images but preprocess.image_size is {params.preprocess.image_size}; re-run the preprocess stage")
        if len(data.train) == 0:
            raise UserError(f"{data.root}: no training images; patchcore needs normal images in train/good")
        device = select_device(params.train.device)
        detector = cls.from_params(params).to(device).eval()
        batch_size = params.score.batch_size

        tick = time.perf_counter()
        features = detector.extract(data.train, batch_size, device)  # (N_train * g * g, D)
        extract_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        coreset = greedy_coreset(features, params.model.coreset_ratio, params.train.seed)
        coreset_seconds = time.perf_counter() - tick
        detector.set_memory_bank(features[coreset.indices.to(features.device)])
        train_patches = int(features.shape[0])
        del features

        bank_size = int(detector.memory_bank.shape[0])
        radius = float(coreset.radius)
        extra = {
            "bank_size": bank_size,
            "train_patches": train_patches,
            "coverage_radius": radius,
            "backbone_file": detector.weights_file,
            "backbone_sha256": detector.weights_sha256,
            "trained_with": kernel_record(device, None),
        }
        state = {name: tensor.detach().cpu() for name, tensor in detector.state_dict().items()}
        save_model_file(run.model_path, state, detector.architecture(), **extra)
        fit_seconds = time.perf_counter() - started

        validation = score_images(detector, data.val, params.score)  # as the thresholds stage scores them
        val_maps, val_scores = validation.maps, validation.scores
        summary = {
            "fit_seconds": fit_seconds,
            "extract_seconds": extract_seconds,
            "coreset_seconds": coreset_seconds,
            "bank_size": bank_size,
            "train_patches": train_patches,
            "coverage_radius": radius,
        }
        if len(val_scores):
            summary["val_score_mean"] = float(val_scores.mean())
            summary["val_score_max"] = float(val_scores.max())
        live = Live(str(run.log_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        try:
            live.log_params({"backbone_file": detector.weights_file, "backbone_sha256": detector.weights_sha256})
            # The plot a bank size is chosen by: how the covering radius shrinks as centres are added.
            for size, radius_at in _growth_points(coreset.growth):
                live.step = size
                live.log_metric("coreset/radius", radius_at)
            live.log_image("validation_maps.png", _map_grid(data.val[:SAMPLE_IMAGES], val_maps[:SAMPLE_IMAGES]))
            for name, value in summary.items():
                live.log_metric(name, value, plot=False)
        finally:
            live.end()
        line = (
            f"patchcore {detector.backbone_name} {list(detector.layers)}: bank {bank_size} of {train_patches} patches "
            f"({params.model.coreset_ratio:g}), coverage radius {radius:.3g}, fit {fit_seconds:.1f} s "
            f"(features {extract_seconds:.1f} s, coreset {coreset_seconds:.1f} s)"
        )
        return FitResult(written=True, summary=line, details={**summary, "backbone_file": detector.weights_file, "backbone_sha256": detector.weights_sha256})


def _growth_points(growth: Sequence[float], points: int = GROWTH_POINTS) -> list[tuple[int, float]]:
    """(bank size, covering radius) at about ``points`` evenly spaced sizes, the last included.

    ``growth[i]`` is the radius once ``i + 1`` centres were chosen (the next centre's distance).

    >>> _growth_points([4.0, 3.0, 2.0, 1.0], points=2)
    [(2, 3.0), (4, 1.0)]
    """
    if not growth:
        return []
    count = len(growth)
    sizes = sorted({max(1, round(count * (i + 1) / points)) for i in range(points)})
    return [(size, float(growth[size - 1])) for size in sizes]


def _map_grid(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Images (k, S, S, 3) uint8 on top, their anomaly maps below (jet, shared scale): uint8 (2S, kS, 3)."""
    import cv2

    top = np.concatenate(list(images), axis=1)
    scaled = np.clip(np.concatenate(list(maps), axis=1) / max(float(maps.max()), 1e-12), 0.0, 1.0)
    bottom = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]  # BGR -> RGB
    return np.concatenate([top, bottom], axis=0)


__all__ = ["Coreset", "PatchCore", "coreset_size", "coverage_radius", "greedy_coreset", "sparse_projection"]
