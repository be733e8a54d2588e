"""The category names each built-in data source offers: plain data, so config can check them.

Kept apart from the modules that fetch the data (:mod:`anomaly_spotter.synthetic_dataset`,
:mod:`anomaly_spotter.mvtec`, :mod:`anomaly_spotter.visa`, ...) because every stage validates
``data.categories`` through :mod:`anomaly_spotter.config`: that must not make every stage depend on the download code.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """A hint naming the closest known name (case-insensitive), or ``""`` when none is close.

    >>> did_you_mean("Botle", ("bottle", "cable")), did_you_mean("xyz", ("bottle",))
    (" (did you mean 'bottle'?)", '')
    """
    close = difflib.get_close_matches(str(name).lower(), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

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

# The other benchmarks' categories (shared/reference/datasets.md).
MVTEC_LOCO_CATEGORIES: tuple[str, ...] = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
MVTEC_3D_CATEGORIES: tuple[str, ...] = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")
MVTEC_AD2_CATEGORIES: tuple[str, ...] = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
VISA_CATEGORIES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)

# data.source -> the categories it offers. The folder source is missing on purpose: its
# categories are whatever sub-folders the user has (checked when fetching).
SOURCE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "synthetic": SYNTHETIC_CATEGORIES,
    "mvtec": MVTEC_CATEGORIES,
    "mvtec_loco": MVTEC_LOCO_CATEGORIES,
    "mvtec_3d": MVTEC_3D_CATEGORIES,
    "mvtec_ad2": MVTEC_AD2_CATEGORIES,
    "visa": VISA_CATEGORIES,
}
