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
``fpr_<p>``               just above the (⌊p/100 · n⌋ + 1)-th highest normal score:   ``fpr_percents``
                          at most p % of the n validation images are flagged
========================  ==========================================================  =========

``<p>`` and ``<k>`` are written with Python's ``:g`` format (``99``, ``99.5``, ``1.5``), the
same names :func:`anomaly_spotter.config.threshold_names` lists (the naming scheme lives there) for
``thresholds.strategy``.
``thresholds.json`` also holds, per candidate, the share of the validation images it flags
(``validation_false_alarm_rates``), so a target false-alarm rate can be checked against it.

``thresholds.json`` (:func:`threshold_report` writes it, :func:`read_thresholds` is its one
reader) also records what the scores were: the params that shape them (:func:`score_record`:
the resolved ``score.map``, the other ``score`` settings but ``batch_size``, and the model's
input size) and where the validation images came from. A threshold is only meaningful for
scores computed the same way, so the ``evaluate`` stage and ``predict`` refuse
(:meth:`Thresholds.require_score`) a file recorded with other params and say to re-run the
``thresholds`` stage; so do they for a file written before the record existed::

    {"format": 2, "strategy": "percentile_99", "threshold": 0.61, "thresholds": {...},
     "score": {"map": "head", "smoothing_sigma": 4.0, ..., "image_size": 128},
     "validation": {"source": "...", "images": 11}, "validation_scores": {"count": 11, ...}}

Example:
    >>> import numpy as np
    >>> t = compute_thresholds(np.arange(1.0, 101.0), percentiles=(95.0,), std_k=2.0, iqr_k=1.5)
    >>> sorted(t)
    ['fpr_1', 'iqr_1.5', 'mean_std_2', 'percentile_95']
    >>> select_threshold(t, "percentile_95")
    95.05
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from anomaly_spotter.config import (
    ScoreConfig,
    ThresholdsConfig,
    check_percentile,
    fpr_key,
    iqr_key,
    mean_std_key,
    percentile_key,
)
from anomaly_spotter.errors import UserError
from anomaly_spotter.fileio import FLOAT_DIGITS, dumps_json

_DEFAULTS = ThresholdsConfig()  # compute_thresholds' defaults are params.yaml's: stated once

# thresholds.json layout; 2 added the "score" and "validation" records (files without them are refused).
FORMAT_VERSION = 2
# ScoreConfig fields that change no score: an eval-mode detector scores each image on its own,
# whatever the batch it comes in. Every other field is recorded (a new one too, by default).
_NOT_SCORE_SHAPING = frozenset({"batch_size"})
# Where the thresholds stage takes its scores from (data.val): stated in every thresholds.json.
# Keyed by the processed data's ``val_source`` (anomaly_spotter.dataset.processed).
VALIDATION_SOURCE = (
    "normal train/good images held out by preprocess (preprocess.val_fraction, preprocess.seed); never test images"
)
OFFICIAL_VALIDATION_SOURCE = (
    "the dataset's official normal validation split (validation/good), all of train/good trains; never test images"
)
VALIDATION_SOURCES = {"holdout": VALIDATION_SOURCE, "official": OFFICIAL_VALIDATION_SOURCE}


class ThresholdError(UserError, ValueError):
    """Thresholds cannot be computed or selected; the message says what to change."""


class ThresholdsMismatchError(ThresholdError):
    """``thresholds.json`` was computed with other score params, or records none; says what to re-run."""


class ScoringModel(Protocol):
    """What :func:`score_record` reads of a detector (:class:`~anomaly_spotter.detectors.base.Detector` fits)."""

    image_size: int

    def map_kind(self, requested: str) -> str: ...


class ThresholdSettings(Protocol):
    """What :func:`threshold_report` reads (``anomaly_spotter.config.ThresholdsConfig`` fits)."""

    strategy: str
    percentiles: tuple[float, ...]
    std_k: float
    iqr_k: float
    fpr_percents: tuple[float, ...]


def _validation_scores(val_scores: Any) -> np.ndarray:
    s = np.asarray(val_scores, dtype=np.float64)
    if s.ndim != 1:
        raise ThresholdError(f"validation scores must be a 1-D array; got shape {s.shape}")
    if len(s) < 2:
        raise ThresholdError(
            f"thresholds need at least 2 normal validation images, got {len(s)}: "
            "raise preprocess.val_fraction or add training images"
        )
    bad = int((~np.isfinite(s)).sum())
    if bad:
        raise ThresholdError(
            f"{bad} of {len(s)} validation scores are NaN or infinite: the model or its anomaly maps diverged"
        )
    return s


def compute_thresholds(
    val_scores: np.ndarray | Iterable[float],
    *,
    percentiles: Iterable[float] = _DEFAULTS.percentiles,
    std_k: float = _DEFAULTS.std_k,
    iqr_k: float = _DEFAULTS.iqr_k,
    fpr_percents: Iterable[float] = _DEFAULTS.fpr_percents,
) -> dict[str, float]:
    """All candidate thresholds from normal validation scores, keyed as in the module docstring.

    Keys come in a fixed order: the percentiles as given, then ``mean_std_<k>``, then ``iqr_<k>``,
    then the ``fpr_<p>`` of ``fpr_percents``.

    >>> compute_thresholds([1.0, 2.0, 3.0, 4.0, 5.0], percentiles=(50,), std_k=1, iqr_k=1, fpr_percents=(20,))
    {'percentile_50': 3.0, 'mean_std_1': 4.58113883008419, 'iqr_1': 6.0, 'fpr_20': 4.000000001}
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

    result = {key: float(v) for key, v in zip(keys, np.percentile(s, percentiles), strict=False)}
    result[mean_std_key(std_k)] = float(s.mean() + std_k * s.std(ddof=1))
    q1, q3 = np.percentile(s, (25.0, 75.0))
    result[iqr_key(iqr_k)] = float(q3 + iqr_k * (q3 - q1))
    for p in fpr_percents:
        result[fpr_key(float(p))] = false_alarm_threshold(s, float(p))
    return result


def _just_above(x: float) -> float:
    """The smallest number above ``x`` that keeps its value through ``thresholds.json`` (FLOAT_DIGITS digits).

    >>> _just_above(4.0), _just_above(0.0)
    (4.000000001, 1e-12)
    """
    rounded = float(f"{x:.{FLOAT_DIGITS}g}")
    if rounded > x:
        return rounded
    step = 10.0 ** (math.floor(math.log10(abs(x))) - (FLOAT_DIGITS - 1)) if x else 1e-12
    return float(f"{x + step:.{FLOAT_DIGITS}g}")


def false_alarm_threshold(val_scores: np.ndarray | Iterable[float], percent: float) -> float:
    """The ``fpr_<percent>`` threshold: at most ``percent`` % of the normal validation images score >= it.

    ``⌊percent/100 · n⌋`` images may be flagged, so the threshold sits just above the next-highest
    score (ties there are all passed). With 10 images and 1 %, none may be flagged: just above the maximum.

    >>> false_alarm_threshold(np.arange(1.0, 11.0), 1.0), false_alarm_threshold(np.arange(1.0, 11.0), 20.0)
    (10.00000001, 8.000000001)
    """
    s = _validation_scores(val_scores)
    if not 0.0 < percent < 100.0:
        raise ThresholdError(f"fpr_percents: {percent:g} is not a false-alarm rate in percent in (0, 100)")
    allowed = math.floor(percent / 100.0 * len(s) + 1e-9)
    return _just_above(float(np.sort(s)[::-1][allowed]))


def false_alarm_rates(val_scores: np.ndarray | Iterable[float], thresholds: Mapping[str, float]) -> dict[str, float]:
    """Share of the validation scores at or above each threshold (what each would flag), by name.

    >>> false_alarm_rates([1.0, 2.0, 3.0, 4.0], {"a": 2.0, "b": 4.5})
    {'a': 0.75, 'b': 0.0}
    """
    s = np.asarray(val_scores, dtype=np.float64)
    return {name: float(np.mean(s >= value)) for name, value in thresholds.items()}


def false_alarm_target(strategy: str) -> float | None:
    """The target false-alarm rate (a fraction) of an ``fpr_<p>`` strategy; None for the other rules.

    >>> false_alarm_target("fpr_1"), false_alarm_target("percentile_99")
    (0.01, None)
    """
    if not strategy.startswith("fpr_"):
        return None
    try:
        return float(strategy[len("fpr_") :]) / 100.0
    except ValueError:
        return None


def select_threshold(thresholds: dict[str, float], strategy: str) -> float:
    """The threshold named ``strategy``; an unknown name lists the available ones.

    >>> select_threshold({"percentile_99": 0.5}, "percentile_95")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    anomaly_spotter.evaluation.thresholds.ThresholdError: threshold strategy 'percentile_95' is not computed;
    available: percentile_99
    """
    if strategy not in thresholds:
        available = ", ".join(thresholds) or "(none)"
        raise ThresholdError(f"threshold strategy {strategy!r} is not computed; available: {available}")
    value = float(thresholds[strategy])
    if not math.isfinite(value):
        raise ThresholdError(f"threshold {strategy!r} is not finite ({value})")
    return value


def score_record(config: ScoreConfig, model: ScoringModel) -> dict[str, Any]:
    """The params that shape a detector's scores, as ``thresholds.json`` records them (JSON values).

    ``score.map`` is resolved (``auto`` becomes the model's map, so spelling it out changes
    nothing); ``batch_size`` is left out (it changes no score); ``image_size`` is the model's
    input side (``preprocess.image_size`` at training time).

    >>> from types import SimpleNamespace
    >>> model = SimpleNamespace(image_size=32, map_kind=lambda requested: "head" if requested == "auto" else requested)
    >>> score_record(ScoreConfig(smoothing_sigma=2.0), model)  # doctest: +NORMALIZE_WHITESPACE
    {'combined_ssim_weight': 0.5, 'image_score': 'topk_mean', 'image_size': 32, 'map': 'head',
     'smoothing_sigma': 2.0, 'ssim_window': 11, 'topk_percent': 1.0}
    """
    record = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _NOT_SCORE_SHAPING}
    record["map"] = model.map_kind(config.map)
    record["image_size"] = int(model.image_size)
    # As written to and read back from JSON (fileio rounds floats), so comparisons are like for like.
    result: dict[str, Any] = json.loads(dumps_json(record))
    return result


def threshold_report(
    val_scores: np.ndarray | Iterable[float],
    settings: ThresholdSettings,
    score: Mapping[str, Any],
    *,
    val_source: str = "holdout",
) -> dict[str, Any]:
    """Everything the ``thresholds`` stage writes: the chosen threshold, all candidates, the
    :func:`score_record` ``score`` of the params that produced the scores, and where and what the
    validation scores were (JSON-ready, plain Python types). ``val_source`` is the processed
    data's (``holdout`` or ``official``, :data:`VALIDATION_SOURCES`).

    >>> from types import SimpleNamespace
    >>> cfg = SimpleNamespace(strategy="iqr_1.5", percentiles=(99.0,), std_k=3.0, iqr_k=1.5, fpr_percents=(1.0,))
    >>> r = threshold_report([0.1, 0.2, 0.3, 0.4], cfg, {"map": "ssim", "image_size": 32})
    >>> r["strategy"], round(r["threshold"], 4), sorted(r["thresholds"]), r["validation"]["images"]
    ('iqr_1.5', 0.55, ['fpr_1', 'iqr_1.5', 'mean_std_3', 'percentile_99'], 4)
    """
    s = _validation_scores(val_scores)
    candidates = compute_thresholds(
        s,
        percentiles=settings.percentiles,
        std_k=settings.std_k,
        iqr_k=settings.iqr_k,
        fpr_percents=settings.fpr_percents,
    )
    return {
        "format": FORMAT_VERSION,
        "strategy": settings.strategy,
        "threshold": select_threshold(candidates, settings.strategy),
        "thresholds": candidates,
        "validation_false_alarm_rates": false_alarm_rates(s, candidates),
        "score": dict(score),
        "validation": {"source": VALIDATION_SOURCES[val_source], "images": len(s)},
        "validation_scores": {
            "count": int(len(s)),
            "mean": float(s.mean()),
            "std": float(s.std(ddof=1)),
            "min": float(s.min()),
            "max": float(s.max()),
        },
    }


# -- reading thresholds.json: the one reader (evaluate, predict, bench) ------------------------


def _rerun(category: str | None) -> str:
    return (
        f"`dvc repro thresholds@{category}`"
        if category
        else "`dvc repro thresholds` (`thresholds@<category>` for one category)"
    )


@dataclass(frozen=True)
class Thresholds:
    """A parsed ``thresholds.json``: the chosen threshold and the record of how its scores were made.

    >>> t = parse_thresholds(threshold_report([0.1, 0.3], ThresholdsConfig(), {"map": "ssim"}), "example")
    >>> t.strategy, round(t.threshold, 3), t.score, t.validation_images
    ('percentile_99', 0.298, {'map': 'ssim'}, 2)
    """

    threshold: float
    strategy: str
    candidates: dict[str, float]  # every computed threshold by name (the file's "thresholds")
    score: dict[str, Any]  # score_record() of the params the validation scores were computed with
    validation_source: str
    validation_images: int
    normal_score_min: float | None  # lowest normal validation score (predict's heatmap colour scale)
    where: str  # the file (and revision) it came from, for messages
    # share of the validation images each candidate flags (empty in files written before it existed)
    validation_false_alarm_rates: dict[str, float] = dataclasses.field(default_factory=dict)

    def require_score(self, current: Mapping[str, Any], *, category: str | None = None, user: str = "evaluate") -> None:
        """Raise :class:`ThresholdsMismatchError` unless ``current`` (a :func:`score_record`) is the recorded one.

        The message names the file, every differing key with both values and what to run.

        >>> t = parse_thresholds(
        ...     threshold_report([0.1, 0.3], ThresholdsConfig(), {"map": "ssim", "smoothing_sigma": 4.0}), "t.json"
        ... )
        >>> t.require_score({"map": "ssim", "smoothing_sigma": 2.0}, category="weave")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        anomaly_spotter.evaluation.thresholds.ThresholdsMismatchError: t.json was computed with other score params
        than evaluate uses now: smoothing_sigma is 4.0 in t.json but 2.0 now; its threshold does not apply to these
        scores. Run `dvc repro thresholds@weave` to recompute it (or restore the params it records)
        """
        missing = object()
        keys = sorted(set(self.score) | set(current))
        differences = [
            (
                f"{key} is {_shown(self.score.get(key, missing))} in {self.where} "
                f"but {_shown(current.get(key, missing))} now"
            )
            for key in keys
            if self.score.get(key, missing) != current.get(key, missing)
        ]
        if differences:
            raise ThresholdsMismatchError(
                f"{self.where} was computed with other score params than {user} uses now: {'; '.join(differences)}; "
                f"its threshold does not apply to these scores. Run {_rerun(category)} to recompute it "
                "(or restore the params it records)"
            )


def _shown(value: Any) -> str:
    return "(not recorded)" if not isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)


def parse_thresholds(data: Mapping[str, Any] | str | bytes, where: str, *, category: str | None = None) -> Thresholds:
    """A :class:`Thresholds` from ``thresholds.json`` text (or its parsed dict); ``where`` names it in errors.

    A file without the score record (written before it existed), or one that is not a
    thresholds file, is a :class:`ThresholdsMismatchError` / :class:`ThresholdError` that says
    what to re-run, never a ``KeyError``.

    >>> parse_thresholds(  # doctest: +NORMALIZE_WHITESPACE
    ...     '{"strategy": "percentile_99", "threshold": 0.5, "thresholds": {"percentile_99": 0.5}}', "old.json"
    ... )
    Traceback (most recent call last):
    ...
    anomaly_spotter.evaluation.thresholds.ThresholdsMismatchError: old.json does not record the score params its
    threshold was computed with (it predates that record), so it cannot be checked against the params used now.
    Run `dvc repro thresholds` (`thresholds@<category>` for one category) to rewrite it
    """
    rerun = _rerun(category)
    try:
        raw = dict(data) if isinstance(data, Mapping) else json.loads(data)
    except (ValueError, TypeError) as exc:
        raise ThresholdError(f"{where} is not valid JSON ({exc}); run {rerun} to rewrite it") from exc
    if not isinstance(raw, dict) or "threshold" not in raw:
        raise ThresholdError(f"{where} is not a thresholds file (no 'threshold'); run {rerun} to rewrite it")
    score, validation = raw.get("score"), raw.get("validation")
    if not isinstance(score, dict) or not isinstance(validation, dict):
        raise ThresholdsMismatchError(
            f"{where} does not record the score params its threshold was computed with (it predates that record), "
            f"so it cannot be checked against the params used now. Run {rerun} to rewrite it"
        )
    try:
        threshold = float(raw["threshold"])
        strategy = str(raw["strategy"])
        candidates = {str(k): float(v) for k, v in raw.get("thresholds", {}).items()}
        stats = raw.get("validation_scores") or {}
        normal_min = stats.get("min")
        rates = {str(k): float(v) for k, v in (raw.get("validation_false_alarm_rates") or {}).items()}
        parsed = Thresholds(
            threshold=threshold,
            strategy=strategy,
            candidates=candidates,
            score=score,
            validation_source=str(validation["source"]),
            validation_images=int(validation["images"]),
            normal_score_min=float(normal_min) if isinstance(normal_min, (int, float)) else None,
            where=where,
            validation_false_alarm_rates=rates,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ThresholdError(f"{where} is malformed ({type(exc).__name__}: {exc}); run {rerun} to rewrite it") from exc
    if not math.isfinite(parsed.threshold):
        raise ThresholdError(f"{where} holds a non-finite threshold ({parsed.threshold}); run {rerun} to rewrite it")
    return parsed


def read_thresholds(path: str | os.PathLike[str], *, category: str | None = None) -> Thresholds:
    """:func:`parse_thresholds` of the file at ``path``; a missing file says what to run.

    >>> read_thresholds("models/weave/thresholds.json", category="weave")  # doctest: +SKIP
    Thresholds(threshold=0.61, strategy='percentile_99', ...)
    """
    path = Path(path)
    if not path.is_file():
        raise ThresholdError(f"{path} is missing; run {_rerun(category)} (or `dvc pull`) to create it")
    return parse_thresholds(path.read_bytes(), str(path), category=category)
