"""Training-time augmentations (albumentations 2.x), built from ``params.yaml`` ``augment``.

Only the training split is augmented; validation and test images are used as they are.
Argument names follow albumentations 2.x, which silently ignores the 1.x ones (for example
``GaussNoise(var_limit=...)``), so each transform here is checked by a test that it changes
the image when its probability is 1.

Example:
    >>> import numpy as np
    >>> from anomaly_spotter.config import AugmentConfig
    >>> transform = build_augmentations(AugmentConfig(hflip_p=1.0, brightness_contrast_p=0.0))
    >>> image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    >>> bool((transform(image=image)["image"] == image[:, ::-1]).all())
    True
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402

from anomaly_spotter.config import AugmentConfig  # noqa: E402


def build_augmentations(config: AugmentConfig, seed: int | None = None) -> A.Compose:
    """An ``A.Compose`` of the enabled transforms (probability > 0), in a fixed order."""
    transforms: list[A.BasicTransform] = []
    if config.hflip_p > 0:
        transforms.append(A.HorizontalFlip(p=config.hflip_p))
    if config.vflip_p > 0:
        transforms.append(A.VerticalFlip(p=config.vflip_p))
    if config.rotate90_p > 0:
        transforms.append(A.RandomRotate90(p=config.rotate90_p))
    if config.shift_p > 0:
        transforms.append(
            A.Affine(
                translate_percent=(-config.shift_limit, config.shift_limit),
                border_mode=4,  # cv2.BORDER_REFLECT_101: no black borders that look like defects
                p=config.shift_p,
            )
        )
    if config.brightness_contrast_p > 0:
        transforms.append(
            A.RandomBrightnessContrast(
                brightness_limit=config.brightness_limit,
                contrast_limit=config.contrast_limit,
                p=config.brightness_contrast_p,
            )
        )
    if config.noise_p > 0:
        transforms.append(A.GaussNoise(std_range=(config.noise_std, config.noise_std), p=config.noise_p))
    return A.Compose(transforms, seed=seed)
