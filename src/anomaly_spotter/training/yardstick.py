"""The ablation yardstick: detection of synthetic anomalies on the normal validation images.

Used by ``bench/ablation.py`` to choose settings without looking at the test split; no stage
imports it (so editing it re-runs nothing). Every validation image is scored clean and once more
with an anomaly from a fixed generator: :data:`YARDSTICK_ANOMALIES` with
:data:`YARDSTICK_SOURCES`, always pasted, seeded by ``seed`` and the image index, so every
variant is measured on the same corrupted images.

Example:
    >>> synthetic_validation_metrics(detector, data.val, params.score)  # doctest: +SKIP
    {'val_synthetic_image_auroc': 0.97, 'val_synthetic_pixel_auroc': 0.93}
"""

from __future__ import annotations

import numpy as np

from anomaly_spotter.config import AnomaliesConfig, ScoreConfig
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.evaluation import metrics as m
from anomaly_spotter.scoring import score_images
from anomaly_spotter.training.datasets import sample_seed
from anomaly_spotter.training.pasted_anomalies import AnomalyGenerator

# Frozen, so the yardstick's numbers stay comparable across versions: sources added to the
# generator later (``shade``) are left out, and the settings are written here, not taken from
# params.yaml (which experiments change).
YARDSTICK_SOURCES = ("patches", "jitter", "rotate", "texture")
YARDSTICK_ANOMALIES = AnomaliesConfig(
    probability=1.0, mask="perlin", sources=YARDSTICK_SOURCES, opacity_min=0.15, opacity_max=1.0, foreground_only=True
)


def synthetic_validation_metrics(
    model: Detector, val_images: np.ndarray, config: ScoreConfig, *, seed: int = 0
) -> dict[str, float]:
    """Image and pixel AUROC of the normal validation images against copies with synthetic anomalies.

    See the module docstring for how the corrupted copies are made.
    """
    generator = AnomalyGenerator(YARDSTICK_ANOMALIES)
    images = np.asarray(val_images)
    pasted = [
        generator(image, images, np.random.default_rng([sample_seed(seed, 0, i), 2])) for i, image in enumerate(images)
    ]
    corrupted = np.stack([p.image for p in pasted])
    masks = [np.zeros(image.shape[:2], bool) for image in images] + [p.mask > 0 for p in pasted]
    clean, anomalous = score_images(model, images, config), score_images(model, corrupted, config)
    labels = np.r_[np.zeros(len(images), int), np.ones(len(images), int)]
    return {
        "val_synthetic_image_auroc": m.image_auroc(labels, np.r_[clean.scores, anomalous.scores]),
        "val_synthetic_pixel_auroc": m.pixel_auroc(masks, list(clean.maps) + list(anomalous.maps)),
    }
