"""Reading images and masks from disk with errors that name the file.

OpenCV decodes PNG, JPEG, BMP and TIFF. Every image comes back as uint8 RGB (grayscale is
replicated to three channels so one model serves both kinds of category); masks come back as
boolean arrays (:func:`read_mask`, the one mask reader) and are brought to model resolution by
:func:`resize_mask`, never by :func:`resize`.

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


def _pack_channels(channels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8/uint16 channels to one integer per pixel, first channel in the high bits.

    Zero exactly where every channel is zero; distinct colours give distinct integers.
    """
    bits = 8 * channels.dtype.itemsize
    packed = np.zeros(channels.shape[:2], np.uint32 if bits == 8 else np.uint64)
    for c in range(channels.shape[2]):
        packed = (packed << bits) | channels[:, :, c]
    return packed


def read_mask_values(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a mask to one unsigned integer per pixel (H, W): 0 where the pixel is good.

    Masks are read at their native bit depth (``IMREAD_UNCHANGED``); ``IMREAD_GRAYSCALE`` would
    scale a 16-bit mask down to 8 bits (defect values 1 or 255 become 0) and weight colours by
    luminance. What comes back:

    * grayscale, 8- or 16-bit: the stored values (uint8 / uint16), so 0/1, 0/255 and 0/65535
      masks all work;
    * colour (RGB, and palette PNGs, which OpenCV expands to their colours): the channels packed
      as ``0xRRGGBB`` (uint32; uint64 with 16 bits per channel), so a pixel is non-zero when
      *any* channel is, and distinct colours stay distinct for the binary check of
      :mod:`anomaly_spotter.dataset.layout`;
    * alpha is ignored, unless the colour is black everywhere and the alpha varies (black
      strokes on a transparent canvas): then the alpha alone is the mask. An opaque or
      constant alpha carries no drawing, and counting it would make every pixel defective.

    A palette PNG is judged by its colours, not its indices: OpenCV expands the palette before
    we see it, reading indices would take a second decoder for one rare format, and by colour a
    mask is scored exactly as it looks in any viewer. The case this misses, a defect index whose
    colour is black, also looks empty in a viewer, and layout validation rejects a defective
    image whose mask is all zero.

    Raises :class:`DataError` naming the file when it cannot be decoded or is not 8/16-bit.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m_mask.png"
    >>> _ = cv2.imwrite(str(p), np.array([[0, 1, 255]], np.uint16))
    >>> read_mask_values(p).tolist(), read_mask(p).tolist()
    ([[0, 1, 255]], [[False, True, True]])
    """
    mask = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if mask.dtype not in (np.uint8, np.uint16):
        raise DataError([f"{path}: unsupported mask pixel type {mask.dtype}; save the mask as an 8- or 16-bit PNG"])
    if mask.ndim == 2:
        return mask
    if mask.shape[2] == 1:
        return mask[:, :, 0]
    has_alpha = mask.shape[2] in (2, 4)
    colour = mask[:, :, :-1] if has_alpha else mask
    if colour.shape[2] == 3:
        colour = colour[:, :, ::-1]  # OpenCV decodes BGR; pack as RGB so the values read as #RRGGBB
    if has_alpha and not colour.any():
        alpha = mask[:, :, -1]
        if alpha.min() != alpha.max():
            return np.ascontiguousarray(alpha)
    return colour[:, :, 0].copy() if colour.shape[2] == 1 else _pack_channels(colour)


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a mask to bool (H, W): a pixel is defective when its value is > 0 (see :func:`read_mask_values`)."""
    return read_mask_values(path) > 0


def image_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image file (decodes it; raises :class:`DataError` when it cannot)."""
    image = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    return int(image.shape[0]), int(image.shape[1])


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W[, C]) image to ``size`` x ``size`` (area filter down, linear up); masks use
    :func:`resize_mask`.
    """
    if image.shape[0] >= size and image.shape[1] >= size:
        interpolation = cv2.INTER_AREA  # area averaging avoids aliasing when shrinking
    else:
        interpolation = cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool (H, W) mask to bool (``size``, ``size``) without losing a defect pixel.

    Every axis that shrinks is area-averaged on the 0/1 mask and thresholded at > 0, so an output
    pixel is defective when its block holds any defective input pixel; nearest neighbour samples
    one pixel per block and drops a 1-px scratch at 1024 -> 128. The average is taken in
    float32, where a 1/64 share stays > 0 (in uint8 it would round to 0). Every axis that grows
    uses nearest neighbour, which copies each input pixel whole, so enlarging is exact.

    >>> scratch = np.zeros((1024, 1024), bool)
    >>> scratch[517, :] = True                  # a 1-px horizontal scratch
    >>> small = resize_mask(scratch, 128)
    >>> small.shape, np.flatnonzero(small.any(axis=1)).tolist()   # 517 // 8 == 64
    ((128, 128), [64])
    """
    height, width = mask.shape
    shrunk = (min(height, size), min(width, size))
    out = mask.astype(bool)
    if shrunk != (height, width):
        out = cv2.resize(out.astype(np.float32), (shrunk[1], shrunk[0]), interpolation=cv2.INTER_AREA) > 0
    if shrunk != (size, size):
        out = cv2.resize(out.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
    return out


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB or grayscale array (deterministic: no timestamps)."""
    if image.ndim == 3:
        image = image[:, :, ::-1]
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def encode_float_tiff(array: np.ndarray) -> bytes:
    """TIFF bytes of a 2-D map as float32 (deterministic: no timestamp or software tag).

    The format of MVTec's evaluation scripts and benchmark servers for anomaly maps.
    """
    import io

    import tifffile  # deferred: only map exports need it

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(array, dtype=np.float32), metadata=None, software=False, datetime=False)
    return buffer.getvalue()
