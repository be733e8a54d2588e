"""Decision thresholds from the anomaly scores of *normal validation images only*.

The test set is never looked at here: a threshold tuned on test labels would make the reported
accuracy / F1 optimistic. Each rule assumes only that normal images score lower than defective
ones, and differs in how far into the normal scores' upper tail it reaches:

========================  ==========================================================  =========
key                       value                                                       parameter
========================  ==========================================================  =========
``percentile_<p>``        p-th percentile (numpy's linear interpolation)              ``percentiles``
``mean_std_<k>``          mean + k · sample standard deviation (ddof = 1)             ``std_k``
``iqr_<k>``               Q3 + k · (Q3 − Q1) (Tukey's fence; quartiles as above)      ``iqr_k``
========================  ==========================================================  =========

``<p>`` and ``<k>`` are written with Python's ``:g`` format (``99``, ``99.5``, ``1.5``), the
same names :func:`anomaly_spotter.config.threshold_names` lists (the naming scheme lives there) for ``thresholds.strategy``.

Example:
    >>> import numpy as np
    >>> t = compute_thresholds(np.arange(1.0, 101.0), percentiles=(95.0,), std_k=2.0, iqr_k=1.5)
    >>> sorted(t)
    ['iqr_1.5', 'mean_std_2', 'percentile_95']
    >>> select_threshold(t, "percentile_95")
    95.05
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from anomaly_spotter.config import ThresholdsConfig, check_percentile, iqr_key, mean_std_key, percentile_key
from anomaly_spotter.errors import UserError

_DEFAULTS = ThresholdsConfig()  # compute_thresholds' defaults are params.yaml's: stated once


class ThresholdError(UserError, ValueError):
    """Thresholds cannot be computed or selected; the message says what to change."""


class ThresholdSettings(Protocol):
    """What :func:`threshold_report` reads (``anomaly_spotter.config.ThresholdsConfig`` fits)."""

    strategy: str
    percentiles: tuple[float, ...]
    std_k: float
    iqr_k: float


def _validation_scores(val_scores: Any) -> np.ndarray:
    s = np.asarray(val_scores, dtype=np.float64)
    if s.ndim != 1:
        raise ThresholdError(f"validation scores must be a 1-D array; got shape {s.shape}")
    if len(s) < 2:
        raise ThresholdError(
            f"thresholds need at least 2 normal validation images, got {len(s)}: raise preprocess.val_fraction or add training images"
        )
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise ThresholdError(f"{bad} of {len(s)} validation scores are NaN or infinite: the model or its anomaly maps diverged")
    return s


def compute_thresholds(
    val_scores: np.ndarray | Iterable[float],
    *,
    percentiles: Iterable[float] = _DEFAULTS.percentiles,
    std_k: float = _DEFAULTS.std_k,
    iqr_k: float = _DEFAULTS.iqr_k,
) -> dict[str, float]:
    """All candidate thresholds from normal validation scores, keyed as in the module docstring.

    Keys come in a fixed order: the percentiles as given, then ``mean_std_<k>``, then ``iqr_<k>``.

    >>> compute_thresholds([1.0, 2.0, 3.0, 4.0, 5.0], percentiles=(50,), std_k=1, iqr_k=1)
    {'percentile_50': 3.0, 'mean_std_1': 4.58113883008419, 'iqr_1': 6.0}
    """
    s = _validation_scores(val_scores)
    percentiles = tuple(float(p) for p in percentiles)
    for p in percentiles:
        problem = check_percentile(p)
        if problem:
            raise ThresholdError(f"percentile {problem}")
    keys = [percentile_key(p) for p in percentiles]
    if len(set(keys)) != len(keys):
        raise ThresholdError(f"percentiles {list(percentiles)} repeat a value")
    for name, k in (("std_k", std_k), ("iqr_k", iqr_k)):
        if not (math.isfinite(k) and k >= 0):
            raise ThresholdError(f"{name} must be a finite number >= 0; got {k!r}")

    result = {key: float(v) for key, v in zip(keys, np.percentile(s, percentiles))}
    result[mean_std_key(std_k)] = float(s.mean() + std_k * s.std(ddof=1))
    q1, q3 = np.percentile(s, (25.0, 75.0))
    result[iqr_key(iqr_k)] = float(q3 + iqr_k * (q3 - q1))
    return result


def select_threshold(thresholds: dict[str, float], strategy: str) -> float:
    """The threshold named ``strategy``; an unknown name lists the available ones.

    >>> select_threshold({"percentile_99": 0.5}, "percentile_95")
    Traceback (most recent call last):
    ...
    anomaly_spotter.thresholds.ThresholdError: threshold strategy 'percentile_95' is not computed; available: percentile_99
    """
    if strategy not in thresholds:
        available = ", ".join(thresholds) or "(none)"
        raise ThresholdError(f"threshold strategy {strategy!r} is not computed; available: {available}")
    value = float(thresholds[strategy])
    if not math.isfinite(value):
        raise ThresholdError(f"threshold {strategy!r} is not finite ({value})")
    return value


def threshold_report(val_scores: np.ndarray | Iterable[float], settings: ThresholdSettings) -> dict[str, Any]:
    """Everything the ``thresholds`` stage writes: the chosen threshold, all candidates, and a
    summary of the validation scores they came from (JSON-ready, plain Python types).

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(strategy="iqr_1.5", percentiles=(99.0,), std_k=3.0, iqr_k=1.5)
    >>> r = threshold_report([0.1, 0.2, 0.3, 0.4], cfg)
    >>> r["strategy"], round(r["threshold"], 4), sorted(r["thresholds"])
    ('iqr_1.5', 0.55, ['iqr_1.5', 'mean_std_3', 'percentile_99'])
    """
    s = _validation_scores(val_scores)
    candidates = compute_thresholds(s, percentiles=settings.percentiles, std_k=settings.std_k, iqr_k=settings.iqr_k)
    return {
        "strategy": settings.strategy,
        "threshold": select_threshold(candidates, settings.strategy),
        "thresholds": candidates,
        "validation_scores": {
            "count": int(len(s)),
            "mean": float(s.mean()),
            "std": float(s.std(ddof=1)),
            "min": float(s.min()),
            "max": float(s.max()),
        },
    }
