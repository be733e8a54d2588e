"""Drawing test images with their anomaly maps at the threshold: the mistakes gallery and the fixed selection.

Each case is one row of three panels: the input | the anomaly map over it (a shared colour
scale) with the threshold drawn as a white contour (the pixels whose map value reaches it) and
the ground truth outlined in green | the ground-truth mask (or, for image-label-only data, a
blank panel saying so). A caption above each row names the file, its score and the threshold.

Drawn with OpenCV into one array and PNG-encoded by it (no timestamps, so identical runs give
identical bytes), which costs a few milliseconds per case; a matplotlib figure per row would
cost about a second per gallery.

Example:
    >>> import numpy as np
    >>> row = GalleryRow("crack/000.png score 0.9", np.zeros((8, 8, 3), np.uint8), np.ones((8, 8)),
    ...                  np.ones((8, 8), bool))
    >>> gallery_png([row], title="demo", threshold=0.5, vmin=0.0, vmax=1.0)[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anomaly_spotter.dataset.images import cv2  # OpenCV as images.py configures it (its env var precedes the import)

PANEL = 192  # panel side, px: every image is drawn at this size
GAP = 6
CAPTION = 22  # caption band above each row
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREEN, GREY = (255, 255, 255), (0, 0, 0), (40, 200, 40), (90, 90, 90)
NO_MASK = "no mask (image labels only)"


@dataclass(frozen=True)
class GalleryRow:
    """One case: all arrays at the same (model) resolution."""

    caption: str
    image: np.ndarray  # uint8 (H, W, 3) RGB
    anomaly_map: np.ndarray  # float (H, W)
    mask: np.ndarray | None  # bool (H, W) ground truth; None: the dataset has no masks


def _resized(array: np.ndarray, nearest: bool) -> np.ndarray:
    if array.shape[0] == PANEL and array.shape[1] == PANEL:
        return array
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(array, (PANEL, PANEL), interpolation=interpolation)


def _outline(canvas: np.ndarray, region: np.ndarray, colour: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, 1)


def overlay(row: GalleryRow, *, threshold: float, vmin: float, vmax: float) -> np.ndarray:
    """The map in JET colours over the image, the ``map >= threshold`` contour white, the mask outline green."""
    image = _resized(np.ascontiguousarray(row.image, dtype=np.uint8), nearest=True)
    amap = _resized(np.asarray(row.anomaly_map, dtype=np.float32), nearest=False)
    scale = max(vmax - vmin, 1e-12)
    level = np.clip((amap - vmin) / scale * 255.0, 0, 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    canvas = cv2.addWeighted(image, 0.55, colours, 0.45, 0.0)
    if row.mask is not None:
        _outline(canvas, _resized(np.asarray(row.mask, np.uint8), nearest=True) > 0, GREEN)
    _outline(canvas, amap >= threshold, WHITE)
    return canvas


def _mask_panel(mask: np.ndarray | None) -> np.ndarray:
    if mask is not None:
        grey = _resized(np.asarray(mask, np.uint8) * 255, nearest=True)
        return np.repeat(grey[..., None], 3, axis=-1)
    panel = np.full((PANEL, PANEL, 3), 235, np.uint8)
    for i, line in enumerate(("no mask", "(image labels only)")):
        cv2.putText(panel, line, (10, PANEL // 2 - 8 + 20 * i), FONT, 0.45, GREY, 1, cv2.LINE_AA)
    return panel


def _text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.42, colour: tuple[int, ...] = BLACK) -> None:
    cv2.putText(canvas, text.encode("ascii", "replace").decode("ascii"), (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def header_height(title_lines: int) -> int:
    """Height of the band holding ``title_lines`` lines of title and the column names."""
    return 16 * title_lines + 30


def gallery_image(rows: Sequence[GalleryRow], *, title: str, threshold: float, vmin: float, vmax: float) -> np.ndarray:
    """The RGB array of :func:`gallery_png`: a title (lines split at ``\\n``), column names, a row per case."""
    lines = title.split("\n")
    header = header_height(len(lines))
    width = 3 * PANEL + 4 * GAP
    height = header + max(len(rows), 1) * (CAPTION + PANEL + GAP) + GAP
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        _text(canvas, line, GAP, 17 + 16 * i, 0.42)
    without_masks = any(row.mask is None for row in rows)
    outlines = f"map, white: >= {threshold:.4g}" + ("" if without_masks else "; green: truth")
    columns = ("input", outlines, NO_MASK if without_masks else "ground truth")
    for c, name in enumerate(columns):
        _text(canvas, name, GAP + c * (PANEL + GAP), header - 8, 0.38, GREY)
    if not rows:
        _text(canvas, "none at this threshold", GAP, header + 40, 0.5, GREY)
    for r, row in enumerate(rows):
        top = header + r * (CAPTION + PANEL + GAP)
        _text(canvas, row.caption, GAP, top + 15)
        image = _resized(np.ascontiguousarray(row.image, np.uint8), nearest=True)
        panels = (image, overlay(row, threshold=threshold, vmin=vmin, vmax=vmax), _mask_panel(row.mask))
        for c, panel in enumerate(panels):
            left = GAP + c * (PANEL + GAP)
            canvas[top + CAPTION : top + CAPTION + PANEL, left : left + PANEL] = panel
    return canvas


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB array (OpenCV writes no timestamp or software tag)."""
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV fails only when out of memory
        raise RuntimeError("PNG encoding failed")
    return bytes(buffer.tobytes())


def gallery_png(rows: Sequence[GalleryRow], *, title: str, threshold: float, vmin: float, vmax: float) -> bytes:
    """PNG of :func:`gallery_image`."""
    return encode_png(gallery_image(rows, title=title, threshold=threshold, vmin=vmin, vmax=vmax))
