"""Reading images and masks from disk with errors that name the file.

OpenCV decodes PNG, JPEG, BMP and TIFF. Every image comes back as uint8 RGB (grayscale is
replicated to three channels so one model serves both kinds of category); masks come back as
boolean arrays.

Example:
    >>> import numpy as np, cv2, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "gray.png"
    >>> _ = cv2.imwrite(str(p), np.full((4, 5), 7, np.uint8))
    >>> read_image(p).shape
    (4, 5, 3)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from anomaly_spotter.errors import DataError

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**30))
import cv2  # noqa: E402  (the env var must be set before the import)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def _decode(path: Path, flags: int) -> np.ndarray:
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError([f"{path}: cannot be read ({exc.strerror or exc})"]) from exc
    if data.size == 0:
        raise DataError([f"{path}: file is empty (0 bytes); replace it with a valid image"])
    image = cv2.imdecode(data, flags)
    if image is None:
        raise DataError([f"{path}: not a decodable image (truncated or wrong format); replace or delete it"])
    return image


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to uint8 RGB of shape (H, W, 3).

    16-bit images are scaled to 8 bits; an alpha channel is dropped; grayscale is replicated.
    Raises :class:`DataError` naming the file when it is empty, truncated or not an image.
    """
    image = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError([f"{path}: unsupported pixel type {image.dtype}; save it as 8-bit PNG"])
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, ::-1])  # OpenCV decodes BGR


def read_mask_values(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a mask file to its raw single-channel uint8 values (H, W)."""
    mask = _decode(Path(path), cv2.IMREAD_GRAYSCALE)
    return mask


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a mask to bool (H, W): any non-zero pixel is defective."""
    return read_mask_values(path) > 0


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image file (decodes it; raises :class:`DataError` when it cannot)."""
    image = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    return int(image.shape[0]), int(image.shape[1])


def resize(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize an (H, W[, C]) array to ``size`` x ``size`` (area filter down, linear up; nearest for masks)."""
    if nearest:
        interpolation = cv2.INTER_NEAREST
    elif image.shape[0] >= size and image.shape[1] >= size:
        interpolation = cv2.INTER_AREA  # area averaging avoids aliasing when shrinking
    else:
        interpolation = cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB or grayscale array (deterministic: no timestamps)."""
    if image.ndim == 3:
        image = image[:, :, ::-1]
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()
