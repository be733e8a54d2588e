"""Figures that show *why* a model succeeds or fails: heatmap grids and score histograms.

PNG bytes are deterministic (no timestamps or software tags), so identical runs give identical
files and DVC sees no change.

Example:
    >>> import numpy as np
    >>> png = score_histogram_png(np.array([0.1, 0.2]), np.array([0.5, 0.9]), threshold=0.3, title="demo")
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PNG_METADATA = {"Software": None}  # keep the bytes independent of the matplotlib build


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return buffer.getvalue()


@dataclass(frozen=True)
class HeatmapRow:
    """One test image in the heatmap grid (all arrays at the same resolution)."""

    title: str
    image: np.ndarray  # uint8 (H, W, 3)
    reconstruction: np.ndarray | None  # uint8 (H, W, 3); None for detectors without one (column left out)
    anomaly_map: np.ndarray  # float (H, W)
    mask: np.ndarray  # bool (H, W) ground truth


def heatmap_grid_png(
    rows: Sequence[HeatmapRow], *, pixel_threshold: float, vmin: float, vmax: float, mask_title: str = "ground truth"
) -> bytes:
    """Grid of input | reconstruction | map overlay | thresholded map | ground truth per row.

    The map colour scale (``vmin`` to ``vmax``) is shared by all rows so rows can be compared.
    The thresholded map marks pixels whose map value reaches the image threshold: with the
    default top-k-mean image score, that is where the image's score comes from.
    """
    with_reconstruction = any(row.reconstruction is not None for row in rows)
    columns: tuple[str, ...] = ("input", "reconstruction", "anomaly map", f"map >= {pixel_threshold:.3g}", mask_title)
    if not with_reconstruction:
        columns = tuple(c for c in columns if c != "reconstruction")
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.0 * len(columns), 2.0 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        panels = (
            dict(X=row.image),
            *((dict(X=row.reconstruction),) if with_reconstruction else ()),
            None,  # overlay, drawn below
            dict(X=row.anomaly_map >= pixel_threshold, cmap="gray", vmin=0, vmax=1),
            dict(X=row.mask, cmap="gray", vmin=0, vmax=1),
        )
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is None:
                ax.imshow(row.image)
                ax.imshow(row.anomaly_map, cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax)
            else:
                ax.imshow(**panel)
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(row.title, fontsize=7)
    fig.tight_layout()
    return _png(fig)


def score_histogram_png(good: np.ndarray, defective: np.ndarray, *, threshold: float, title: str) -> bytes:
    """Histogram of image scores, good vs defective, with the decision threshold marked."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    both = np.concatenate([good, defective])
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-12, 31)
    ax.hist(good, bins=cast(Sequence[float], bins), alpha=0.6, label=f"good ({len(good)})", color="tab:green")
    ax.hist(
        defective, bins=cast(Sequence[float], bins), alpha=0.6, label=f"defective ({len(defective)})", color="tab:red"
    )
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("image anomaly score")
    ax.set_ylabel("test images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
