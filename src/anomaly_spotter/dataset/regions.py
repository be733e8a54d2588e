"""MVTec LOCO AD's per-region ground truth, kept for the sPRO metric
(:func:`anomaly_spotter.evaluation.metrics.au_spro`).

The fetch stage (:mod:`anomaly_spotter.sources.mvtec_loco`) keeps, beside the MVTec AD layout::

    <category>/regions/<family>/<image stem>/<MMM>.png    one mask image per defect region
    <category>/regions/defects_config.json                 each defect type's pixel value and saturation

A region's mask marks its pixels with its defect type's ``pixel_value``. Its saturation area
is ``saturation_threshold`` pixels (at most the region's area) or, with
``relative_saturation``, that fraction of its area: overlapping that many pixels counts as
fully detected.

Example:
    >>> regions = read_regions(Path("data/raw/pushpins"), data.test_items)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from anomaly_spotter.dataset.images import read_mask_values
from anomaly_spotter.dataset.layout import REGIONS
from anomaly_spotter.errors import DataError

DEFECTS_CONFIG = "defects_config.json"


class TestFile(Protocol):
    """What :func:`read_regions` reads of a test item (``processed.TestItem`` fits)."""

    @property
    def file(self) -> str: ...

    @property
    def label(self) -> int: ...


def saturation_area(area: int, threshold: float, relative: bool) -> float:
    """Pixels of a region that count as fully detected.

    >>> saturation_area(100, 0.5, True), saturation_area(100, 40, False), saturation_area(10, 40, False)
    (50.0, 40.0, 10.0)
    """
    return float(threshold * area) if relative else float(min(threshold, area))


def _saturations(config_path: Path) -> dict[int, tuple[float, bool]]:
    try:
        entries = json.loads(config_path.read_text(encoding="utf-8"))
        return {
            int(e["pixel_value"]): (float(e["saturation_threshold"]), bool(e["relative_saturation"])) for e in entries
        }
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(
            [
                f"{config_path}: cannot read the defect types ({exc!r}); expected LOCO's list of "
                f"{{defect_name, pixel_value, saturation_threshold, relative_saturation}}; run the fetch stage again"
            ]
        ) from exc


def read_regions(raw_dir: Path, items: Sequence[TestFile]) -> list[list[tuple[np.ndarray, float]]] | None:
    """Each test item's (region mask, saturation area) list, or None when the category has no ``regions/``."""
    folder = Path(raw_dir) / REGIONS
    if not folder.is_dir():
        return None
    saturations = _saturations(folder / DEFECTS_CONFIG)
    out: list[list[tuple[np.ndarray, float]]] = []
    for item in items:
        if not item.label:
            out.append([])
            continue
        file = Path(item.file)  # test/<family>/<stem>.<ext>
        region_dir = folder / file.parent.name / file.stem
        masks = sorted(region_dir.glob("*")) if region_dir.is_dir() else []
        if not masks:
            raise DataError([f"{region_dir}: no region masks for {item.file}; run the fetch stage again"])
        regions = []
        for mask in masks:
            values = read_mask_values(mask)
            present = np.unique(values[values > 0])
            if len(present) != 1 or int(present[0]) not in saturations:
                raise DataError(
                    [
                        f"{mask}: holds pixel values {present.tolist()}, but a region mask holds one value listed in "
                        f"{DEFECTS_CONFIG} ({sorted(saturations)}); run the fetch stage again"
                    ]
                )
            region = values > 0
            threshold, relative = saturations[int(present[0])]
            regions.append((region, saturation_area(int(region.sum()), threshold, relative)))
        out.append(regions)
    return out
