"""Synthetic anomalies pasted on training images (DRAEM-style): foreign pixels under a random mask.

A discriminative model cannot learn to segment defects from good images alone, so, as in DRAEM
(Zavrtanik et al., ICCV 2021), training images are corrupted on the fly: a random binary mask
picks a region, and the pixels under it are blended with an "anomaly source" image. The
returned mask marks exactly the pasted pixels, which makes it the segmentation target.

Masks (``mask_kind``):

* ``perlin`` – 2-D Perlin noise with a random scale of ``2**k`` cells per axis
  (``k`` in ``0..perlin_scale_max``, drawn per axis, capped so cells keep at least 8 px),
  rotated by a random angle and thresholded;
* ``blobs``  – 1-4 random ellipses or smoothed random polygons, centred on the object;
* ``mixed``  – one of the two, drawn per call.

Sources (``sources``, one drawn uniformly per call):

* ``patches`` – a pool image cut into a grid of tiles that are shuffled (and turned);
* ``jitter``  – a pool image with strong brightness / contrast / colour jitter, sometimes
  inverted or posterised;
* ``rotate``  – a pool image rotated by a random angle, sometimes flipped;
* ``texture`` – a procedural texture: a Perlin colour field, stripes or a checkerboard;
* ``shade``   – the image itself, brighter or darker (and slightly tinted) by a smooth field:
  a change of level without a change of texture (stains, discolouration, uneven surfaces).

The mask is intersected with :func:`foreground_mask` (``foreground_only``) so that, on object
categories, defects land on the object rather than on the background. Every random choice comes
from the ``rng`` passed to the call, so a seeded generator reproduces the same anomalies.

Example:
    >>> rng = np.random.default_rng(0)
    >>> image = np.full((64, 64, 3), 128, np.uint8)
    >>> generator = AnomalyGenerator(AnomaliesConfig(probability=1.0))
    >>> anomaly = generator(image, image[None], rng)
    >>> anomaly.image.shape, anomaly.image.dtype, anomaly.mask.dtype, bool(anomaly.mask.any())
    ((64, 64, 3), dtype('uint8'), dtype('float32'), True)
    >>> bool((anomaly.image[anomaly.mask == 0] == image[anomaly.mask == 0]).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from anomaly_spotter.config import AnomaliesConfig

MAX_MASK_TRIES = 10  # masks outside the area bounds are redrawn this many times, then an ellipse
MAX_SOURCE_TRIES = 3  # sources too similar to the image are redrawn this many times
# Mean absolute difference (grey levels, over the masked pixels and channels) a source must have
# from the image; below it the anomaly would be nearly invisible (e.g. a centred disc rotated).
MIN_SOURCE_DIFFERENCE = 24.0

# foreground_mask heuristic (distances are Euclidean in RGB, 0-441).
BORDER_STRIP_FRACTION = 1 / 16  # width of the border strip that samples the background colour
BORDER_UNIFORMITY_LIMIT = 30.0  # 90th percentile of border distances above this: a texture
BACKGROUND_MARGIN = 10.0  # foreground must lie this far beyond the noisiest border pixels
SMALL_HOLE_FRACTION = 0.01  # enclosed background regions smaller than this are filled
MIN_FOREGROUND_FRACTION = 0.10  # a smaller estimate is not trusted: the whole image is used


@dataclass(frozen=True)
class SyntheticAnomaly:
    """``image`` uint8 (S, S, 3), the corrupted image; ``mask`` float32 (S, S), 1.0 exactly on
    the pasted pixels and 0.0 elsewhere (all zero when no anomaly was added)."""

    image: np.ndarray
    mask: np.ndarray


# ---------------------------------------------------------------------------------------------
# Noise and masks
# ---------------------------------------------------------------------------------------------


def perlin_noise(shape: tuple[int, int], resolution: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise, float32 ``shape``, roughly in [-1, 1].

    ``resolution`` is the number of lattice cells per axis (rows, cols); any image size works,
    it need not be a multiple of the resolution.
    """
    height, width = shape
    cells_y, cells_x = resolution
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(cells_y + 1, cells_x + 1))
    gradient_y, gradient_x = np.sin(angles), np.cos(angles)  # (cells_y + 1, cells_x + 1) each
    # Pixel centres in lattice coordinates, split into cell index and position inside the cell.
    y = (np.arange(height) + 0.5) * cells_y / height  # (H,)
    x = (np.arange(width) + 0.5) * cells_x / width  # (W,)
    cell_y, cell_x = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
    frac_y, frac_x = (y - cell_y)[:, None], (x - cell_x)[None, :]  # (H, 1), (1, W)

    def corner(dy: int, dx: int) -> np.ndarray:
        """Dot product of the corner's gradient with the offset to the pixel, (H, W)."""
        rows, cols = (cell_y + dy)[:, None], (cell_x + dx)[None, :]
        return gradient_y[rows, cols] * (frac_y - dy) + gradient_x[rows, cols] * (frac_x - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)  # 6t^5 - 15t^4 + 10t^3: smooth at cell edges

    weight_y, weight_x = fade(frac_y), fade(frac_x)
    top = corner(0, 0) + weight_x * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + weight_x * (corner(1, 1) - corner(1, 0))
    return (math.sqrt(2.0) * (top + weight_y * (bottom - top))).astype(np.float32)


def _rotate(array: np.ndarray, angle_degrees: float) -> np.ndarray:
    """Rotate about the centre, same size, reflecting at the border so no corner is left empty."""
    height, width = array.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle_degrees, 1.0)
    return cv2.warpAffine(array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _random_pixel(support: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(row, col) of a uniformly drawn True pixel of ``support``."""
    rows, cols = np.nonzero(support)
    i = rng.integers(len(rows))
    return int(rows[i]), int(cols[i])


def _perlin_mask(shape: tuple[int, int], rng: np.random.Generator, scale_max: int, threshold: float) -> np.ndarray:
    """Thresholded, rotated Perlin noise, bool (H, W); the DRAEM mask."""
    # Cells of at least 8 px (DRAEM's finest: 32 cells on 256 px); finer gives speckle, not regions.
    limit = max(1, min(shape) // 8)
    resolution = (
        min(2 ** int(rng.integers(0, scale_max + 1)), limit),
        min(2 ** int(rng.integers(0, scale_max + 1)), limit),
    )
    noise = _rotate(perlin_noise(shape, resolution, rng), float(rng.uniform(-90.0, 90.0)))
    return noise > threshold


def _blob_mask(support: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-4 ellipses or smoothed random polygons centred on ``support`` pixels, bool (H, W)."""
    height, width = support.shape
    side = min(height, width)
    canvas = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        row, col = _random_pixel(support, rng)
        radius = side * rng.uniform(0.03, 0.15)
        if rng.random() < 0.5:
            axes = (max(1, round(radius * rng.uniform(0.4, 1.0))), max(1, round(radius * rng.uniform(0.4, 1.0))))
            cv2.ellipse(canvas, (col, row), axes, float(rng.uniform(0.0, 180.0)), 0, 360, 1, thickness=-1)
        else:
            vertices = int(rng.integers(5, 11))
            angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, vertices))
            radii = radius * rng.uniform(0.4, 1.2, vertices)
            points = np.stack([col + radii * np.cos(angles), row + radii * np.sin(angles)], axis=1)  # (V, 2) x, y
            polygon = np.zeros((height, width), np.float32)
            cv2.fillPoly(polygon, [np.round(points).astype(np.int32)], 1.0)
            # Blurring and re-thresholding rounds the polygon's corners into an organic blob.
            smoothed = cv2.GaussianBlur(polygon, (0, 0), sigmaX=max(0.5, 0.3 * radius))
            canvas[smoothed > 0.5] = 1
    return canvas.astype(bool)


def _fallback_ellipse(
    support: np.ndarray, rng: np.random.Generator, min_fraction: float, max_fraction: float
) -> np.ndarray:
    """One ellipse centred on ``support`` whose area is the geometric mean of the bounds; never empty."""
    height, width = support.shape
    target_area = math.sqrt(max(min_fraction, 1e-6) * max_fraction) * height * width
    radius = math.sqrt(target_area / math.pi)
    elongation = math.sqrt(rng.uniform(1.0, 3.0))  # axis ratio up to 3: a squashed ellipse
    axes = (max(1, round(radius * elongation)), max(1, round(radius / elongation)))
    row, col = _random_pixel(support, rng)
    canvas = np.zeros((height, width), np.uint8)
    cv2.ellipse(canvas, (col, row), axes, float(rng.uniform(0.0, 180.0)), 0, 360, 1, thickness=-1)
    mask = canvas.astype(bool) & support
    mask[row, col] = True  # the centre is on the support, so the mask has at least one pixel
    return mask


def is_grayscale(image: np.ndarray) -> bool:
    """True when all three channels of uint8 (S, S, 3) ``image`` are equal (a grey image as RGB).

    >>> is_grayscale(np.zeros((2, 2, 3), np.uint8)), is_grayscale(np.eye(3, dtype=np.uint8)[None])
    (True, False)
    """
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Estimated object pixels of ``image`` uint8 (H, W, 3), bool (H, W).

    Heuristic, made for MVTec-style photos of one object on a plain background:

    1. The background colour is the per-channel median of a border strip (1/16 of the side).
    2. If the border is not uniform (90th percentile of its distances to that colour above
       ``BORDER_UNIFORMITY_LIMIT``) the image is a texture: everything is foreground.
    3. Otherwise a pixel is foreground when its RGB distance to the background colour exceeds
       both Otsu's threshold on the distance map and the noisiest border pixels plus a margin.
    4. A morphological close joins the object's pieces, and enclosed background regions smaller
       than 1 % of the image (specular spots, dark print) are filled; larger ones stay background
       (the hole of a washer is not part of the washer).
    5. An estimate covering less than 10 % of the image is not trusted: everything is foreground.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    everything = np.ones((height, width), bool)
    pixels = image.astype(np.float32)
    strip = max(1, round(min(height, width) * BORDER_STRIP_FRACTION))
    border = np.concatenate(
        [
            pixels[:strip].reshape(-1, 3),
            pixels[-strip:].reshape(-1, 3),
            pixels[:, :strip].reshape(-1, 3),
            pixels[:, -strip:].reshape(-1, 3),
        ]
    )  # (B, 3)
    background = np.median(border, axis=0)  # (3,)
    border_distance = np.linalg.norm(border - background, axis=1)  # (B,)
    if np.percentile(border_distance, 90) > BORDER_UNIFORMITY_LIMIT:
        return everything
    distance = np.linalg.norm(pixels - background, axis=2)  # (H, W)
    otsu, _ = cv2.threshold(np.clip(distance, 0, 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    threshold = max(float(otsu), float(np.percentile(border_distance, 99)) + BACKGROUND_MARGIN)
    foreground = (distance > threshold).astype(np.uint8)
    kernel_size = max(3, (min(height, width) // 32) | 1)  # odd, ~3 % of the side
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_CLOSE, kernel)
    # Background components that do not touch the image border are holes; fill the small ones.
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - foreground, connectivity=4)
    for label in range(1, count):
        left, top, box_width, box_height, area = stats[label]
        touches_border = left == 0 or top == 0 or left + box_width == width or top + box_height == height
        if not touches_border and area < SMALL_HOLE_FRACTION * height * width:
            foreground[labels == label] = 1
    if foreground.mean() < MIN_FOREGROUND_FRACTION:
        return everything
    return foreground.astype(bool)


# ---------------------------------------------------------------------------------------------
# Anomaly sources. Each returns uint8 (H, W, 3), the pixels pasted under the mask.
# ---------------------------------------------------------------------------------------------


def _pick(source_pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return source_pool[int(rng.integers(len(source_pool)))]


def _shuffled_patches(source_pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pool image cut into g x g square tiles (g in 2..8) that are shuffled and turned."""
    source = _pick(source_pool, rng).copy()
    height, width = source.shape[:2]
    grid = int(rng.integers(2, 9))
    tile = min(height, width) // grid
    if tile < 1:
        return source
    tiles = [
        source[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile].copy() for r in range(grid) for c in range(grid)
    ]
    order = rng.permutation(len(tiles))
    turns = rng.integers(0, 4, size=len(tiles))  # square tiles: quarter turns keep the size
    for position, (index, quarter_turns) in enumerate(zip(order, turns, strict=False)):
        r, c = divmod(position, grid)
        source[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = np.rot90(tiles[index], k=int(quarter_turns))
    return source  # rows / cols beyond grid * tile (when the side is not a multiple) stay as they were


def _jittered(source_pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pool image with strong brightness, contrast and colour changes; sometimes inverted or
    posterised."""
    source = _pick(source_pool, rng).astype(np.float32)  # (H, W, 3)
    mean = source.mean(axis=(0, 1), keepdims=True)  # (1, 1, 3)
    contrast = rng.uniform(0.4, 2.0)
    channel_gain = rng.uniform(0.6, 1.4, size=3)  # colour cast
    brightness = rng.uniform(-70.0, 70.0)
    jittered = ((source - mean) * contrast + mean) * channel_gain + brightness
    jittered = np.clip(jittered, 0, 255)
    if rng.random() < 0.25:
        jittered = 255.0 - jittered
    if rng.random() < 0.25:
        levels = 2 ** int(rng.integers(1, 4))  # 2, 4 or 8 levels per channel
        step = 256.0 / levels
        jittered = np.floor(jittered / step) * step + step / 2
    return np.clip(jittered, 0, 255).round().astype(np.uint8)


def _rotated(source_pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pool image rotated by a random angle about its centre, sometimes flipped first."""
    source = _pick(source_pool, rng)
    flip = int(rng.integers(-1, 3))  # 2: no flip; 0 vertical, 1 horizontal, -1 both (cv2.flip codes)
    if flip != 2:
        source = cv2.flip(source, flip)
    return _rotate(np.ascontiguousarray(source), float(rng.uniform(-180.0, 180.0)))


def _shaded(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image itself made brighter or darker (and tinted) by a slowly varying amount.

    Stains, discolouration and uneven surfaces bring no new texture, only another level: every
    other source replaces the texture, so without this one the head never learns that a smooth
    change of brightness alone is a defect.
    """
    height, width = image.shape[:2]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    strength = sign * rng.uniform(0.25, 0.6) * 128.0  # grey levels at the field's peak
    field = 0.75 + 0.25 * perlin_noise((height, width), (2, 2), rng)  # (H, W), ~[0.5, 1]: varies across the region
    tint = rng.uniform(0.85, 1.15, size=3)  # (3,) a slight colour cast (grey images lose it later)
    shaded = image.astype(np.float32) + strength * field[:, :, None] * tint
    return np.clip(shaded, 0, 255).round().astype(np.uint8)


def _procedural_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A Perlin colour field, stripes or a checkerboard between two random colours."""
    height, width = shape
    colour_a, colour_b = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:  # fractal Perlin noise: three octaves, each twice as fine and half as strong
        base = 2 ** int(rng.integers(1, 4))
        field: np.ndarray = sum(  # type: ignore[assignment]  # a sum of arrays is an array
            0.5**octave * perlin_noise(shape, (min(base * 2**octave, height), min(base * 2**octave, width)), rng)
            for octave in range(3)
        )
        weight = (field - field.min()) / max(float(np.ptp(field)), 1e-6)  # stretched to [0, 1]
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(4.0, max(5.0, min(height, width) / 3))
        along = xx * np.cos(angle) + yy * np.sin(angle)
        if kind == 1:  # stripes, soft (sinusoidal) or hard
            wave = np.sin(2 * np.pi * along / period)
            weight = 0.5 + 0.5 * (wave if rng.random() < 0.5 else np.sign(wave))
        else:  # checkerboard in rotated coordinates
            across = -xx * np.sin(angle) + yy * np.cos(angle)
            weight = (np.floor(along / period) + np.floor(across / period)) % 2
    texture = colour_a + weight[:, :, None] * (colour_b - colour_a)  # (H, W, 3)
    return np.clip(texture, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


class AnomalyGenerator:
    """Corrupts clean training images with DRAEM-style synthetic anomalies.

    Args:
        settings: ``params.anomalies`` (:class:`~anomaly_spotter.config.AnomaliesConfig`):
            ``probability`` that an anomaly is added to an image (the others come back unchanged
            with an all-zero mask, so the segmentation model also sees good images), the ``mask``
            kind (one of ``config.ANOMALY_MASKS``), the ``sources`` drawn from uniformly (a non-empty subset
            of ``config.ANOMALY_SOURCES``), the blend weight drawn from U(``opacity_min``, ``opacity_max``)
            and ``foreground_only`` (intersect the mask with :func:`foreground_mask`).
        perlin_scale_max: Perlin masks use 2**k cells per axis, k drawn in 0..perlin_scale_max.
        perlin_threshold: Perlin noise (about [-1, 1]) above this is anomalous; higher means
            smaller regions.
        min_area_fraction, max_area_fraction: bounds on the mask's area as a fraction of the
            whole image; masks outside them are redrawn (``MAX_MASK_TRIES``), then replaced by
            one ellipse on the foreground.
    """

    def __init__(
        self,
        settings: AnomaliesConfig,
        *,
        perlin_scale_max: int = 6,
        perlin_threshold: float = 0.5,
        min_area_fraction: float = 0.002,
        max_area_fraction: float = 0.25,
    ) -> None:
        # ``settings`` is params.anomalies, validated by config: taken as given. The mask-shape
        # constants are this module's own (no param sets them), so they are checked here.
        if (
            isinstance(perlin_scale_max, bool)
            or not isinstance(perlin_scale_max, int)
            or not 0 <= perlin_scale_max <= 10
        ):
            raise ValueError(f"perlin_scale_max must be an integer in [0, 10], got {perlin_scale_max!r}")
        _check_range("perlin_threshold", perlin_threshold, -1.0, 1.0)
        _check_range("min_area_fraction", min_area_fraction, 0.0, 1.0)
        _check_range("max_area_fraction", max_area_fraction, 0.0, 1.0)
        if max_area_fraction <= 0.0:
            raise ValueError(f"max_area_fraction must be > 0, got {max_area_fraction!r}")
        if min_area_fraction > max_area_fraction:
            raise ValueError(
                f"min_area_fraction ({min_area_fraction}) must not exceed max_area_fraction ({max_area_fraction})"
            )
        self.probability = settings.probability
        self.mask_kind = settings.mask
        self.sources = tuple(settings.sources)
        self.opacity_min = settings.opacity_min
        self.opacity_max = settings.opacity_max
        self.foreground_only = settings.foreground_only
        self.perlin_scale_max = perlin_scale_max
        self.perlin_threshold = float(perlin_threshold)
        self.min_area_fraction = float(min_area_fraction)
        self.max_area_fraction = float(max_area_fraction)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({fields})"

    @classmethod
    def from_config(cls, config: AnomaliesConfig) -> AnomalyGenerator | None:
        """The generator ``params.anomalies`` describes; None when switched off (probability 0)."""
        return cls(config) if config.probability > 0 else None

    def __call__(self, image: np.ndarray, source_pool: np.ndarray, rng: np.random.Generator) -> SyntheticAnomaly:
        """Corrupt ``image`` uint8 (S, S, 3) with probability ``probability``.

        ``source_pool`` uint8 (M, S, S, 3) holds training images the sources are made from (it
        may include ``image``). Pixels outside the returned mask are bit-identical to ``image``.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (S, S, 3), got {image.dtype} {image.shape}")
        if (
            source_pool.ndim != 4
            or source_pool.shape[1:] != image.shape
            or source_pool.dtype != np.uint8
            or len(source_pool) == 0
        ):
            raise ValueError(
                f"source_pool must be uint8 (M, {', '.join(map(str, image.shape))}) with M >= 1, "
                f"got {source_pool.dtype} {source_pool.shape}"
            )
        height, width = image.shape[:2]
        if rng.random() >= self.probability:  # always one draw, so streams stay aligned
            return SyntheticAnomaly(image=image.copy(), mask=np.zeros((height, width), np.float32))
        support = foreground_mask(image) if self.foreground_only else np.ones((height, width), bool)
        mask = self._draw_mask(support, rng)  # bool (S, S), never empty
        source = self._draw_source(image, source_pool, mask, rng)  # uint8 (S, S, 3)
        opacity = rng.uniform(self.opacity_min, self.opacity_max)
        blended = (1.0 - opacity) * image.astype(np.float32) + opacity * source.astype(np.float32)
        blended = np.clip(blended.round(), 0, 255).astype(np.uint8)
        # np.where rather than arithmetic with the mask: unmasked pixels are copied, not recomputed.
        corrupted = np.where(mask[:, :, None], blended, image)
        return SyntheticAnomaly(image=corrupted, mask=mask.astype(np.float32))

    def _draw_mask(self, support: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        kind = self.mask_kind if self.mask_kind != "mixed" else ("perlin", "blobs")[int(rng.integers(2))]
        image_area = support.size
        for _attempt in range(MAX_MASK_TRIES):
            if kind == "perlin":
                mask = _perlin_mask(support.shape, rng, self.perlin_scale_max, self.perlin_threshold)
            else:
                mask = _blob_mask(support, rng)
            mask &= support
            area = np.count_nonzero(mask)
            if area > 0 and self.min_area_fraction <= area / image_area <= self.max_area_fraction:
                return mask
        return _fallback_ellipse(support, rng, self.min_area_fraction, self.max_area_fraction)

    def _draw_source(
        self, image: np.ndarray, source_pool: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        kind = self.sources[int(rng.integers(len(self.sources)))]
        under_mask = image[mask].astype(np.float32)  # (K, 3)
        grey = is_grayscale(image)
        for _attempt in range(MAX_SOURCE_TRIES):
            if kind == "patches":
                source = _shuffled_patches(source_pool, rng)
            elif kind == "jitter":
                source = _jittered(source_pool, rng)
            elif kind == "rotate":
                source = _rotated(source_pool, rng)
            elif kind == "shade":
                source = _shaded(image, rng)
            else:
                source = _procedural_texture(image.shape[:2], rng)
            if grey:
                # A grey category never shows colour: a coloured paste would teach "colour means
                # defect", a shortcut none of its real defects offers.
                source = np.repeat(source.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2)
            if np.abs(source[mask].astype(np.float32) - under_mask).mean() >= MIN_SOURCE_DIFFERENCE:
                return source
        # Still too close to the image (a uniform object, a rotation-symmetric one): shift every
        # channel by half the range, which changes each pixel by exactly 128 grey levels.
        return ((image.astype(np.int16) + 128) % 256).astype(np.uint8)
