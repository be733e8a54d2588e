"""The training datasets: PyTorch datasets over preprocessed arrays.

Images are stored as uint8 (N, S, S, 3) and become float tensors (3, S, S) in [-1, 1] here
(:mod:`anomaly_spotter.tensors`).
Augmentation randomness is a pure function of ``(seed, epoch, index)``: the result does not
depend on worker count or on whether training was resumed from a checkpoint.

Example:
    >>> import numpy as np
    >>> ds = ImageDataset(np.zeros((4, 8, 8, 3), np.uint8))
    >>> ds[0].shape, float(ds[0].min())
    (torch.Size([3, 8, 8]), -1.0)
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

from anomaly_spotter.tensors import to_tensor


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch (stable across Python runs)."""
    return zlib.crc32(f"{seed}/{epoch}/{index}".encode())


class ImageDataset(Dataset):
    """Images from a uint8 array, optionally augmented with an albumentations ``Compose``."""

    def __init__(self, images: np.ndarray, transform=None, seed: int = 0) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def augmented(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (S, S, 3), augmented with this epoch's draw."""
        image = np.asarray(self.images[index])
        if self.transform is not None:
            self.transform.set_random_seed(sample_seed(self.seed, self.epoch, index))
            image = self.transform(image=image)["image"]
        return image

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.augmented(index))


class AnomalyDataset(ImageDataset):
    """Training triples ``(input, target, mask)`` for defect-removal training.

    Each image is augmented, then, with the generator's probability, gets a synthetic anomaly
    (:class:`anomaly_spotter.training.pasted_anomalies.AnomalyGenerator`, sources drawn from the same
    images). ``input`` is the corrupted image, ``target`` the clean one (both (3, S, S) in
    [-1, 1]) and ``mask`` float32 (1, S, S) marks the pasted pixels. Without a generator,
    ``input`` is ``target`` and the mask is empty: plain clean -> clean training.

    The anomaly of sample ``index`` in epoch ``e`` is a pure function of ``(seed, e, index)``,
    like the augmentation, so resumed and multi-worker runs see the same data.

    >>> ds = AnomalyDataset(np.zeros((4, 8, 8, 3), np.uint8))
    >>> [tuple(t.shape) for t in ds[0]]
    [(3, 8, 8), (3, 8, 8), (1, 8, 8)]
    """

    def __init__(self, images: np.ndarray, transform=None, seed: int = 0, generator=None) -> None:
        super().__init__(images, transform, seed)
        self.generator = generator

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        image = self.augmented(index)
        clean = to_tensor(image)  # (3, S, S)
        if self.generator is None:
            return clean, clean, torch.zeros(1, *clean.shape[1:])
        # A separate stream from the augmentation's, so turning anomalies on or off leaves the
        # augmentation of every sample unchanged.
        rng = np.random.default_rng([sample_seed(self.seed, self.epoch, index), 1])
        anomaly = self.generator(image, self.images, rng)
        return (
            to_tensor(anomaly.image),
            clean,
            torch.from_numpy(np.ascontiguousarray(anomaly.mask, dtype=np.float32))[None],
        )
