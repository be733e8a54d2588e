"""The built-in synthetic dataset: three small MVTec AD-style categories, fully deterministic.

Categories (each with three defect types and exact pixel masks):

* ``weave``  – a regular woven texture in colour; defects: scratch, hole, stain.
* ``marble`` – an irregular grey stone texture (grayscale); defects: crack, spot, stain.
* ``washer`` – a metal ring on a plain background; defects: scratch, crack, missing (a bite out
  of the ring). Defects land on the object only, as on real object categories.

Normal images vary in lighting (gain and a gentle gradient), position (texture phase or object
shift of a few pixels) and sensor noise, so a detector cannot just memorise one picture.
A defect is painted only inside its mask, before the same sensor noise is added, so the mask
marks exactly the pixels the defect changed.

Example:
    >>> from anomaly_spotter.config import SyntheticConfig
    >>> sample = render_sample("weave", "hole", index=0, config=SyntheticConfig(side=64))
    >>> sample.image.shape, sample.image.dtype, bool(sample.mask.any())
    ((64, 64, 3), dtype('uint8'), True)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from anomaly_spotter.dataset.images import encode_png
from anomaly_spotter.fileio import staging_dir, write_bytes
from anomaly_spotter.sources.source import Source

if TYPE_CHECKING:
    from anomaly_spotter.config import DataConfig, SyntheticConfig


@dataclass(frozen=True)
class Sample:
    """One generated image: ``image`` uint8 (H, W, 3); ``clean`` the same without the defect;
    ``mask`` bool (H, W), all False for good images."""

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray


# ---------------------------------------------------------------------------------------------
# Normal appearance. Each renderer returns float32 (H, W, 3) in [0, 255] and, for objects, the
# object's support mask (where defects may land).
# ---------------------------------------------------------------------------------------------


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """Global gain in [0.9, 1.1] times a gentle linear gradient of up to ±6 %."""
    gain = rng.uniform(0.9, 1.1)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    gradient = 1.0 + 0.12 * (np.cos(angle) * xx + np.sin(angle) * yy)
    return (gain * gradient)[:, :, None].astype(np.float32)


def _weave(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    period = size / 10.0  # ten threads across, whatever the size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx += rng.uniform(0, period)  # small shifts: the texture's phase moves
    yy += rng.uniform(0, period)
    warp = np.sin(2 * np.pi * xx / period) * np.sin(np.pi * yy / period)
    weft = np.sin(2 * np.pi * yy / period) * np.sin(np.pi * xx / period)
    over = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 0  # which thread lies on top
    relief = np.where(over, np.abs(warp), np.abs(weft))
    base = np.array([70, 95, 150], np.float32)  # denim blue
    highlight = np.array([150, 170, 210], np.float32)
    image = base + relief[:, :, None] * (highlight - base)
    return image, np.ones((size, size), bool)


def _marble(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    field = np.zeros((size, size), np.float32)
    for scale, weight in ((size / 6, 1.0), (size / 16, 0.5), (size / 32, 0.25)):
        noise = rng.standard_normal((size, size)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=scale, borderType=cv2.BORDER_REFLECT)
        field += weight * blurred / (blurred.std() + 1e-6)
    # Soft light veins where the field crosses multiples of pi/2: irregular, but smooth enough
    # that a small autoencoder learns it within the default few minutes of CPU training.
    veins = np.exp(-((np.sin(2.0 * field) / 0.35) ** 2))
    grey = 115 + 30 * np.tanh(field / 2) + 30 * veins
    return np.repeat(grey[:, :, None], 3, axis=2), np.ones((size, size), bool)


def _washer(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    cy, cx = size / 2 + rng.uniform(-0.03, 0.03, size=2) * size  # shifted by up to 3 %
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(yy - cy, xx - cx)
    outer, inner = 0.38 * size, 0.17 * size
    ring = (radius <= outer) & (radius >= inner)
    background = np.array([40, 40, 45], np.float32)
    metal = np.array([185, 180, 165], np.float32)
    # Radial shading makes the ring look turned; a directional sheen gives lighting variation.
    shade = 0.75 + 0.25 * np.cos(np.pi * (radius - inner) / (outer - inner) - np.pi / 2)
    sheen = 1.0 + 0.1 * np.cos(np.arctan2(yy - cy, xx - cx) - rng.uniform(0, 2 * np.pi))
    image = np.where(ring[:, :, None], metal * (shade * sheen)[:, :, None], background)
    return image.astype(np.float32), ring


RENDERERS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "weave": _weave,
    "marble": _marble,
    "washer": _washer,
}

# ---------------------------------------------------------------------------------------------
# Defects. Each returns (mask, paint): mask bool (H, W) and paint float32 (H, W, 3), the colour
# the defect gives to the pixels under the mask (it may depend on the clean image).
# ---------------------------------------------------------------------------------------------


def _random_point(rng: np.random.Generator, support: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(support)
    i = rng.integers(len(ys))
    return int(ys[i]), int(xs[i])


def _polyline_mask(
    rng: np.random.Generator, support: np.ndarray, *, length: float, width: int, wiggle: float
) -> np.ndarray:
    size = support.shape[0]
    y, x = _random_point(rng, support)
    angle = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    steps = 8
    for _ in range(steps):
        angle += rng.uniform(-wiggle, wiggle)
        x += np.cos(angle) * length / steps
        y += np.sin(angle) * length / steps
        points.append((x, y))
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [np.round(np.array(points)).astype(np.int32)], False, 1, thickness=width)
    return canvas.astype(bool)


def _blob_mask(rng: np.random.Generator, support: np.ndarray, *, radius: float) -> np.ndarray:
    """An irregular blob: a union of a few overlapping ellipses around a point."""
    size = support.shape[0]
    y, x = _random_point(rng, support)
    canvas = np.zeros((size, size), np.uint8)
    for _ in range(4):
        centre = (int(x + rng.uniform(-0.5, 0.5) * radius), int(y + rng.uniform(-0.5, 0.5) * radius))
        axes = (max(2, int(radius * rng.uniform(0.5, 1.0))), max(2, int(radius * rng.uniform(0.5, 1.0))))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return canvas.astype(bool)


def _scratch(rng, clean, support):
    size = clean.shape[0]
    mask = _polyline_mask(rng, support, length=rng.uniform(0.3, 0.5) * size, width=max(1, size // 80), wiggle=0.15)
    bright = rng.random() < 0.5
    paint = np.full_like(clean, 235.0 if bright else 15.0)
    return mask, paint


def _crack(rng, clean, support):
    size = clean.shape[0]
    mask = _polyline_mask(rng, support, length=rng.uniform(0.25, 0.45) * size, width=max(2, size // 60), wiggle=0.9)
    return mask, clean * 0.25  # a dark gap that keeps a trace of the texture


def _hole(rng, clean, support):
    size = clean.shape[0]
    y, x = _random_point(rng, support)
    canvas = np.zeros(support.shape, np.uint8)
    cv2.circle(canvas, (x, y), int(rng.uniform(0.03, 0.06) * size), 1, thickness=-1)
    return canvas.astype(bool), np.full_like(clean, 10.0)


def _spot(rng, clean, support):
    size = clean.shape[0]
    mask = _blob_mask(rng, support, radius=rng.uniform(0.03, 0.05) * size)
    return mask, np.full_like(clean, 230.0 if rng.random() < 0.5 else 30.0)


def _stain(rng, clean, support):
    size = clean.shape[0]
    mask = _blob_mask(rng, support, radius=rng.uniform(0.06, 0.1) * size)
    colourful = np.ptp(clean.reshape(-1, 3).mean(axis=0)) > 5  # grey textures get a dark smear
    if colourful:
        return mask, 0.3 * clean + 0.7 * np.array([150, 90, 30], np.float32)  # a brown, mostly opaque smear
    return mask, 0.3 * clean + 0.7 * 40.0  # oily dark grey, darker than any normal stone


def _missing(rng, clean, support):
    """A bite out of the ring: part of the object replaced by background."""
    size = clean.shape[0]
    y, x = _random_point(rng, support)
    canvas = np.zeros(support.shape, np.uint8)
    cv2.circle(canvas, (x, y), int(rng.uniform(0.06, 0.09) * size), 1, thickness=-1)
    return canvas.astype(bool), np.broadcast_to(np.array([40, 40, 45], np.float32), clean.shape).copy()


DEFECTS: dict[str, dict[str, Callable]] = {
    "weave": {"scratch": _scratch, "hole": _hole, "stain": _stain},
    "marble": {"crack": _crack, "spot": _spot, "stain": _stain},
    "washer": {"scratch": _scratch, "crack": _crack, "missing": _missing},
}
CATEGORIES: tuple[str, ...] = tuple(RENDERERS)
# What each of them stands for (the README's results table says it).
DESCRIPTIONS: dict[str, str] = {"weave": "regular texture", "marble": "irregular texture, grey", "washer": "object"}
GRAYSCALE = frozenset({"marble"})


def _rng(config: SyntheticConfig, category: str, split: str, index: int) -> np.random.Generator:
    """One independent stream per image, so counts can change without reshuffling other images."""
    key = [config.seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def render_sample(category: str, defect: str, *, index: int, config: SyntheticConfig, split: str = "test") -> Sample:
    """Render one image of ``category``; ``defect`` is ``"good"`` or one of ``DEFECTS[category]``."""
    if category not in RENDERERS:
        raise KeyError(f"unknown synthetic category {category!r}; built-in ones are {', '.join(CATEGORIES)}")
    if defect != "good" and defect not in DEFECTS[category]:
        raise KeyError(f"unknown defect {defect!r} for {category}; choose from {', '.join(DEFECTS[category])}")
    rng = _rng(config, category, f"{split}/{defect}", index)
    size = config.side
    base, support = RENDERERS[category](rng, size)
    clean = base * _lighting(rng, size)
    mask = np.zeros((size, size), bool)
    image = clean
    if defect != "good":
        # Defects land on the object only; one that mostly misses it is drawn again, so every
        # defect is visible (at least 0.2 % of the image).
        for _attempt in range(20):
            mask, paint = DEFECTS[category][defect](rng, clean, support)
            mask &= support
            if mask.sum() >= 0.002 * size * size:
                break
        image = np.where(mask[:, :, None], paint, clean)
    noise = rng.normal(0.0, 3.0, size=clean.shape).astype(np.float32)  # sensor noise, same for both

    def finish(pixels: np.ndarray) -> np.ndarray:
        out = np.clip(pixels + noise, 0, 255).round().astype(np.uint8)
        return np.repeat(out[:, :, :1], 3, axis=2) if category in GRAYSCALE else out

    return Sample(image=finish(image), clean=finish(clean), mask=mask)


def generate_category(category: str, dest: str | Path, config: SyntheticConfig) -> None:
    """Write ``category`` to ``dest`` in MVTec AD layout, atomically (all or nothing).

    Grayscale categories are saved as single-channel PNGs, as MVTec stores its grey ones.
    """
    if category not in RENDERERS:
        raise KeyError(f"unknown synthetic category {category!r}; built-in ones are {', '.join(CATEGORIES)}")

    def save(path: Path, pixels: np.ndarray) -> None:
        write_bytes(path, encode_png(pixels[:, :, 0] if category in GRAYSCALE else pixels))

    with staging_dir(dest) as root:
        for i in range(config.train_good):
            save(
                root / "train" / "good" / f"{i:03d}.png",
                render_sample(category, "good", index=i, config=config, split="train").image,
            )
        for i in range(config.test_good):
            save(root / "test" / "good" / f"{i:03d}.png", render_sample(category, "good", index=i, config=config).image)
        for defect in DEFECTS[category]:
            for i in range(config.test_defect_per_type):
                sample = render_sample(category, defect, index=i, config=config)
                save(root / "test" / defect / f"{i:03d}.png", sample.image)
                write_bytes(
                    root / "ground_truth" / defect / f"{i:03d}_mask.png", encode_png(sample.mask.astype(np.uint8) * 255)
                )


def _fetch(category: str, dest: Path, config: DataConfig) -> None:
    generate_category(category, dest, config.synthetic)


SOURCE = Source("synthetic", CATEGORIES, _fetch)
