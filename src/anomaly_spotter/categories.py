"""The category names each built-in data source offers: plain data, so config can check them.

Kept apart from the modules that fetch the data (:mod:`anomaly_spotter.synthetic_dataset`,
:mod:`anomaly_spotter.mvtec`) because every stage validates ``data.categories`` through
:mod:`anomaly_spotter.config`: that must not make every stage depend on the download code.
"""

from __future__ import annotations

# The built-in synthetic dataset (anomaly_spotter.synthetic_dataset renders each of them).
SYNTHETIC_CATEGORIES: tuple[str, ...] = ("weave", "marble", "washer")
# What each of them stands for (the README's results table says it).
SYNTHETIC_DESCRIPTIONS: dict[str, str] = {"weave": "regular texture", "marble": "irregular texture, grey", "washer": "object"}

# MVTec AD's 15 categories (shared/reference/mvtec_ad.md).
MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
