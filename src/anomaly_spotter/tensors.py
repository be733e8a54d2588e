"""The image-tensor convention every layer shares: uint8 (N, S, S, 3) arrays <-> float (N, 3, S, S) in [-1, 1].

Preprocessed images are stored as uint8 channels-last arrays; detectors see float32
channels-first tensors in [-1, 1]. Scoring, export, training and the feature extractors all
convert through these two functions, so the convention is written once.

Example:
    >>> import numpy as np
    >>> x = to_tensor(np.full((2, 4, 4, 3), 255, np.uint8))
    >>> tuple(x.shape), float(x.max()), to_uint8(x).shape
    ((2, 3, 4, 4), 1.0, (2, 4, 4, 3))
"""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) or (S, S, 3) -> float32 (N, 3, S, S) / (3, S, S) in [-1, 1]."""
    tensor = torch.tensor(np.asarray(images), dtype=torch.float32)  # copies: inputs may be read-only memmaps
    tensor = tensor.movedim(-1, -3)  # channels first
    return tensor / 127.5 - 1.0


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float (N, 3, S, S) in [-1, 1] -> uint8 (N, S, S, 3); the inverse of :func:`to_tensor`."""
    scaled = ((tensor.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.movedim(-3, -1).to(torch.uint8).numpy()
