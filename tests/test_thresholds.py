"""Thresholds from normal validation scores."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_spotter.config import ThresholdsConfig, threshold_names
from anomaly_spotter.errors import UserError
from anomaly_spotter.thresholds import ThresholdError, compute_thresholds, select_threshold, threshold_report


def test_hand_computed_values() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    t = compute_thresholds(scores, percentiles=(50.0, 90.0), std_k=2.0, iqr_k=1.5)
    assert list(t) == ["percentile_50", "percentile_90", "mean_std_2", "iqr_1.5"]
    assert t["percentile_50"] == 3.0
    assert t["percentile_90"] == pytest.approx(4.6)  # linear: 1 + 0.9 * 4 = 4.6
    assert t["mean_std_2"] == pytest.approx(3.0 + 2.0 * np.sqrt(2.5))  # sample std (ddof=1) = sqrt(10/4)
    assert t["iqr_1.5"] == pytest.approx(4.0 + 1.5 * 2.0)  # Q1 = 2, Q3 = 4


def test_names_match_the_config_strategy_names() -> None:
    config = ThresholdsConfig(percentiles=(95.0, 99.5), std_k=2.5, iqr_k=3.0)
    t = compute_thresholds(np.linspace(0, 1, 20), percentiles=config.percentiles, std_k=config.std_k, iqr_k=config.iqr_k)
    assert list(t) == threshold_names(config)


def test_select_threshold_and_its_error_lists_keys() -> None:
    t = compute_thresholds([0.1, 0.2, 0.3])
    assert select_threshold(t, "percentile_99") == t["percentile_99"]
    with pytest.raises(ThresholdError, match="available: percentile_95, percentile_99, mean_std_3, iqr_1.5"):
        select_threshold(t, "percentile_90")


@pytest.mark.parametrize(
    "scores, message",
    [
        ([0.5], "at least 2 normal validation images, got 1"),
        ([], "got 0"),
        ([0.1, float("nan"), 0.3], "1 of 3 validation scores are NaN or infinite"),
        ([0.1, float("inf")], "NaN or infinite"),
        ([[0.1, 0.2]], "1-D"),
    ],
)
def test_bad_validation_scores(scores, message: str) -> None:
    with pytest.raises(ThresholdError, match=message):
        compute_thresholds(scores)


def test_bad_settings() -> None:
    with pytest.raises(ThresholdError, match="repeat"):
        compute_thresholds([0.1, 0.2], percentiles=(99, 99.0))
    with pytest.raises(ThresholdError, match="not in"):
        compute_thresholds([0.1, 0.2], percentiles=(101,))
    with pytest.raises(ThresholdError, match="std_k"):
        compute_thresholds([0.1, 0.2], std_k=-1)
    assert issubclass(ThresholdError, UserError) and issubclass(ThresholdError, ValueError)


def test_threshold_report_uses_the_configured_strategy() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    report = threshold_report(scores, ThresholdsConfig(strategy="iqr_1.5"))
    assert report["strategy"] == "iqr_1.5"
    assert report["threshold"] == pytest.approx(0.325 + 1.5 * 0.15)
    assert report["thresholds"] == compute_thresholds(scores)
    assert report["validation_scores"] == {"count": 4, "mean": pytest.approx(0.25), "std": pytest.approx(np.std(scores, ddof=1)), "min": 0.1, "max": 0.4}
