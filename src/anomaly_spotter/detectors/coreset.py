"""The greedy k-center coreset that picks a memory bank out of all training patches.

PatchCore (Roth et al., CVPR 2022) keeps ``model.coreset_ratio`` of the training patches: the
greedy k-center selection (each new centre is the patch farthest from those chosen so far),
computed in a sparse random projection to ``PROJECTION_DIM`` dimensions as the paper does, with
the covering radius in the full feature space reported afterwards (exact, or a linear-cost upper
bound on the largest training sets: see ``RADIUS_CHECK_ROWS``).

The exact greedy costs N x K distances, and K grows with N at a fixed ratio: N squared. Above
``model.coreset_group_patches`` patches the rows are split into balanced groups of consecutive
rows (rows are ordered by image, so a group is a run of whole training images), each keeps
``OVERSAMPLE`` times ``ratio`` of its rows by the exact greedy as candidates, and the greedy
over the candidates picks the bank: the cost is then linear in N, and every patch is still
within the reported (global) radius of the bank.

Example:
    >>> import torch
    >>> features = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    >>> coreset = greedy_coreset(features, 0.1, seed=0)
    >>> len(coreset.indices), coreset.radius > 0
    (50, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PROJECTION_DIM = 128  # the greedy coreset compares patches in a random projection this wide (paper: 128)
CANDIDATES = 256  # patches the greedy search tries per pass (see _greedy_indices: exact, just batched)
CENTRES_PER_PASS = 64  # most centres chosen per pass: batches the distance update into a GEMM
ROW_CHUNK = 65536  # patches per distance block in the coreset: bounds memory to ~17 MB per block
RADIUS_CHUNK = 4096  # patches per exact nearest-neighbour block in coverage_radius
# The coreset's radius check compares at most this many rows (those with the loosest hints) with the whole
# bank: rows x K, linear in N. Where more rows' hints exceed the radius (after the two-stage greedy: 16 470
# rows at 400 growth images, 376 000 at 1600), the reported radius is an upper bound (radius_exact False):
# 17.89 / 18.46 against the exact 17.88 / 15.91; the exact check took 114 s at 1600 (docs/detectors.md).
RADIUS_CHECK_ROWS = 4 * RADIUS_CHUNK
# Grouped greedy (above model.coreset_group_patches rows): each group first keeps OVERSAMPLE x its share as
# candidates, then the greedy over the candidates picks the bank. 4x matched the exact greedy on
# magnetic_tile (1x, a fixed quota per group, lost 0.017 image AUROC; bench/real_data.py, docs/detectors.md).
OVERSAMPLE = 4
# The candidates' own greedy runs in groups of at most this many times coreset_group_patches: one group (so
# global) up to ~1000 training images at 320 px, and still linear in the training images beyond.
STAGE2_GROUP_FACTOR = 2


@dataclass(frozen=True)
class Coreset:
    """A greedy k-center coreset of a feature set."""

    indices: torch.Tensor  # (K,) int64 rows of the features, in the order the greedy chose them
    radius: float  # max over all features of the distance to their nearest kept row (full space), or a bound
    growth: tuple[float, ...] = ()  # covering radius (in the projection) after 1, 2, ... centres (first group)
    groups: int = 1  # row groups the greedy ran in (1: the exact greedy over all rows)
    radius_exact: bool = True  # False: radius is an upper bound (the check stopped at RADIUS_CHECK_ROWS rows)


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


def _greedy_indices(
    z: torch.Tensor, k: int, start: int, radii: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
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


def _grouped_greedy(
    z: torch.Tensor, bounds: list[int], share: float, generator: torch.Generator, growth: list[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy in each group ``bounds`` of rows of ``z`` (N, P), keeping ``share`` of each, from a
    seeded random row: (chosen rows (K,), each row's nearest chosen one as an index into them (N,)).
    ``growth`` receives the first group's radii."""
    chosen: list[torch.Tensor] = []
    assigned: list[torch.Tensor] = []
    kept = 0
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        first = int(torch.randint(hi - lo, (1,), generator=generator))
        picked, nearest = _greedy_indices(z[lo:hi], coreset_size(hi - lo, share), first, growth if lo == 0 else None)
        assigned.append(nearest + kept)
        chosen.append(picked + lo)
        kept += len(picked)
    return torch.cat(chosen), torch.cat(assigned)


def _nearer_in_group(
    features: torch.Tensor, bank: torch.Tensor, bounds: list[int], nearest: torch.Tensor
) -> torch.Tensor:
    """``nearest`` (N,) with each row's hint replaced by its group's nearest bank row when that is closer.

    After stage 2 a row's hint is its candidate's nearest centre: a loose bound, and every row whose
    bound exceeds the radius costs :func:`coverage_radius` a pass over the whole bank (quadratic in N).
    Most rows' nearest centre came from their own group's rows, so one (rows x group's centres) GEMM
    per group, linear in N, tightens nearly all of them.
    """
    better = nearest.clone()
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        local = torch.nonzero((bank >= lo) & (bank < hi)).flatten()  # (L,) positions in the bank
        if len(local) == 0:
            continue
        centres = features[bank[local]]  # (L, D)
        for start in range(lo, hi, RADIUS_CHUNK):
            x = features[start : min(hi, start + RADIUS_CHUNK)]  # (rows, D)
            d2 = torch.cdist(x, centres).square_()  # (rows, L), float32: only chooses the hint
            best, which = d2.min(1)
            hint = better[start : start + len(x)]
            current = (x - features[bank[hint]]).square().sum(1)
            better[start : start + len(x)] = torch.where(best < current, local[which], hint)
    return better


def coverage_radius(features: torch.Tensor, bank: torch.Tensor, nearest: torch.Tensor | None = None) -> float:
    """max over rows of ``features`` (N, D) of the Euclidean distance to the nearest row of ``bank`` (K, D).

    Exact (float64 distances); ``nearest`` (N,) hints as in :func:`radius_bound` spare most of the
    N x K pass.

    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    >>> coverage_radius(x, x[:1])
    5.0
    """
    return radius_bound(features, bank, nearest)[0]


def radius_bound(
    features: torch.Tensor, bank: torch.Tensor, nearest: torch.Tensor | None = None, max_rows: int | None = None
) -> tuple[float, bool]:
    """(r, exact): every row of ``features`` (N, D) is within r of a row of ``bank`` (K, D); r is the max if exact.

    ``nearest`` (N,) gives, for each row, a bank row that is close to it (the coreset's
    assignment): ``|x - bank[nearest[x]]|`` bounds each row's true distance from above, so only
    the rows whose bound exceeds the largest exact distance found so far are checked against the
    whole bank (float64), in decreasing order of bound. With ``max_rows``, at most that many (a
    whole number of ``RADIUS_CHUNK`` blocks) are; if rows with a larger bound remain, r is the
    larger of the exact part and the next bound, an upper bound, and ``exact`` is False.

    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    >>> radius_bound(x, x[:1], max_rows=1)  # the check stops after one block of RADIUS_CHUNK rows
    (5.0, True)
    >>> radius_bound(x, x[2:3], torch.zeros(4, dtype=torch.long))
    (4.47213595499958, True)
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
        if max_rows is not None and lo >= max_rows:
            return max(radius, float(bounds[order[lo]]) * slack), False
        x = features[order[lo : lo + RADIUS_CHUNK]].double()  # (chunk, D)
        d2 = torch.addmm(bank_sq.unsqueeze(0), x, bank64.T, alpha=-2.0).add_(x.square().sum(1, keepdim=True))
        radius = max(radius, float(d2.amin(1).clamp_min(0.0).sqrt().max()))
    return radius, True


def group_bounds(count: int, group_rows: int) -> list[int]:
    """Row bounds of the balanced groups of consecutive rows, at most ``group_rows`` each (0: one group).

    >>> group_bounds(10, 0), group_bounds(10, 10), group_bounds(10, 4)
    ([0, 10], [0, 10], [0, 3, 7, 10])
    """
    groups = 1 if group_rows <= 0 else max(1, math.ceil(count / group_rows))
    return [round(g * count / groups) for g in range(groups + 1)]


def greedy_coreset(
    features: torch.Tensor,
    ratio: float,
    seed: int,
    *,
    group_rows: int = 0,
    oversample: int = OVERSAMPLE,
    projection_dim: int = PROJECTION_DIM,
    radius_rows: int | None = RADIUS_CHECK_ROWS,
) -> Coreset:
    """The PatchCore coreset: greedy k-center (Gonzalez 1985) of ``features`` (N, D), K = ``coreset_size``.

    Deterministic given ``seed``: the first centre is a seeded random row, and distances are
    measured in a seeded :func:`sparse_projection` to ``projection_dim`` dimensions (none when
    D <= ``projection_dim``). Each step adds the row farthest from all chosen ones, so every
    row ends within the returned radius (in the full D dimensions; exact unless more than
    ``radius_rows`` rows needed checking, see :func:`radius_bound`; None: always exact) of the
    bank. Cost: about N * K * ``projection_dim`` multiply-adds, in GEMMs; memory linear in N.

    ``group_rows`` > 0 with N above ``oversample`` x ``group_rows`` (below, the exact greedy is the
    cheaper one), two stages: the greedy runs in each of :func:`group_bounds`'
    groups, keeping ``oversample`` x ``ratio`` of each as candidates, then over the candidates (in
    groups of ``STAGE2_GROUP_FACTOR`` x ``group_rows``) down to K; ``oversample`` <= 1 skips the
    second stage (the bank is the groups' union, a fixed quota each). About
    N * ``group_rows`` * ratio * oversample * ``projection_dim`` multiply-adds: linear in N. The
    radius is still global (each row's distance to the nearest row of the whole bank).

    >>> x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    >>> core = greedy_coreset(x, 0.1, seed=0)
    >>> len(core.indices), len(set(core.indices.tolist()))
    (50, 50)
    >>> bool(torch.cdist(x, x[core.indices]).amin(1).max() <= core.radius + 1e-5)
    True
    >>> grouped = greedy_coreset(x, 0.1, seed=0, group_rows=100)
    >>> covered = bool(torch.cdist(x, x[grouped.indices]).amin(1).max() <= grouped.radius + 1e-5)
    >>> grouped.groups, len(grouped.indices), covered
    (5, 50, True)
    >>> quota = greedy_coreset(x, 0.1, seed=0, group_rows=200, oversample=1)
    >>> quota.groups, len(quota.indices)
    (3, 51)
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
    # Up to `oversample` groups, stage 1 alone would cost more than the exact greedy (N x G x ratio x
    # oversample >= N x K): one group, exact.
    bounds = group_bounds(n, 0 if n <= group_rows * max(1, oversample) else group_rows)
    if len(bounds) == 2:  # one group: the exact greedy over all rows
        indices, nearest = _greedy_indices(projected, k, start, growth)
    else:
        # Stage 1: each group keeps `oversample` times its share as candidates (linear in N).
        share = min(1.0, ratio * oversample)
        indices, nearest = _grouped_greedy(projected, bounds, share, generator, growth if oversample <= 1 else None)
        if oversample > 1 and len(indices) > k:
            # Stage 2: the bank is the greedy over the candidates (in groups once they outgrow one), so
            # centres go where the whole set needs them, not a fixed quota per group.
            inner = group_bounds(len(indices), group_rows * STAGE2_GROUP_FACTOR)
            final, to_final = _grouped_greedy(
                projected[indices.to(projected.device)], inner, k / len(indices), generator, growth
            )
            indices, nearest = indices[final], to_final[nearest]
            nearest = _nearer_in_group(features, indices.to(features.device), bounds, nearest)
    indices = indices.to(features.device)
    radius, exact = radius_bound(features, features[indices], nearest, radius_rows)
    return Coreset(indices.cpu(), radius, tuple(growth), groups=len(bounds) - 1, radius_exact=exact)


__all__ = [
    "Coreset",
    "coreset_size",
    "coverage_radius",
    "greedy_coreset",
    "group_bounds",
    "radius_bound",
    "sparse_projection",
]
