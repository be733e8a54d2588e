"""Thresholds from normal validation scores."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from anomaly_spotter.config import ScoreConfig, ThresholdsConfig, threshold_names
from anomaly_spotter.detectors import DETECTORS
from anomaly_spotter.errors import UserError
from anomaly_spotter.evaluation.thresholds import (
    FORMAT_VERSION,
    VALIDATION_SOURCE,
    ThresholdError,
    ThresholdsMismatchError,
    compute_thresholds,
    false_alarm_rates,
    false_alarm_target,
    false_alarm_threshold,
    parse_thresholds,
    read_thresholds,
    score_record,
    select_threshold,
    threshold_report,
)
from anomaly_spotter.fileio import dumps_json, write_json


def test_hand_computed_values() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    t = compute_thresholds(scores, percentiles=(50.0, 90.0), std_k=2.0, iqr_k=1.5, fpr_percents=(20.0, 50.0))
    assert list(t) == ["percentile_50", "percentile_90", "mean_std_2", "iqr_1.5", "fpr_20", "fpr_50"]
    assert t["percentile_50"] == 3.0
    assert t["percentile_90"] == pytest.approx(4.6)  # linear: 1 + 0.9 * 4 = 4.6
    assert t["mean_std_2"] == pytest.approx(3.0 + 2.0 * np.sqrt(2.5))  # sample std (ddof=1) = sqrt(10/4)
    assert t["iqr_1.5"] == pytest.approx(4.0 + 1.5 * 2.0)  # Q1 = 2, Q3 = 4
    # fpr_20: floor(0.2 * 5) = 1 image may be flagged, so just above the second highest (4);
    # fpr_50: floor(2.5) = 2, just above the third highest (3).
    assert 4.0 < t["fpr_20"] < 4.0 + 1e-8 and 3.0 < t["fpr_50"] < 3.0 + 1e-8


@pytest.mark.parametrize("percent, flagged", [(1.0, 0), (5.0, 1), (10.0, 2), (25.0, 5), (99.0, 19)])
def test_false_alarm_threshold_flags_at_most_the_target_share(percent: float, flagged: int) -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(20)
    threshold = false_alarm_threshold(scores, percent)
    # Through thresholds.json (floats rounded to 10 digits) it flags exactly floor(p/100 * n) images.
    stored = json.loads(dumps_json({"t": threshold}))["t"]
    assert int((scores >= stored).sum()) == flagged == int(percent / 100 * 20)
    assert false_alarm_rates(scores, {"fpr": stored}) == {"fpr": flagged / 20}


def test_false_alarm_threshold_passes_ties_and_refuses_bad_targets() -> None:
    scores = np.array([0.1, 0.5, 0.5, 0.5, 0.2])  # 20 %: one image may be flagged, but the top three tie
    assert int((scores >= false_alarm_threshold(scores, 20.0)).sum()) == 0
    with pytest.raises(ThresholdError, match="fpr_percents: 100 is not a false-alarm rate"):
        false_alarm_threshold(scores, 100.0)


def test_report_records_validation_false_alarm_rates_and_reader_keeps_them() -> None:
    scores = np.linspace(0.0, 1.0, 50)
    report = threshold_report(scores, ThresholdsConfig(strategy="fpr_1", fpr_percents=(1.0, 10.0)), {"map": "ssim"})
    assert report["validation_false_alarm_rates"]["fpr_1"] == 0.0  # floor(0.5) = 0 of 50 may be flagged
    assert report["validation_false_alarm_rates"]["fpr_10"] == pytest.approx(5 / 50)
    parsed = parse_thresholds(dumps_json(report), "t.json")
    assert parsed.strategy == "fpr_1" and parsed.threshold > 1.0
    assert parsed.validation_false_alarm_rates == json.loads(dumps_json(report))["validation_false_alarm_rates"]
    assert false_alarm_target("fpr_0.5") == 0.005 and false_alarm_target("iqr_1.5") is None


def test_names_match_the_config_strategy_names() -> None:
    config = ThresholdsConfig(percentiles=(95.0, 99.5), std_k=2.5, iqr_k=3.0, fpr_percents=(0.5, 2.0))
    t = compute_thresholds(
        np.linspace(0, 1, 20),
        percentiles=config.percentiles,
        std_k=config.std_k,
        iqr_k=config.iqr_k,
        fpr_percents=config.fpr_percents,
    )
    assert list(t) == threshold_names(config)


def test_select_threshold_and_its_error_lists_keys() -> None:
    t = compute_thresholds([0.1, 0.2, 0.3])
    assert select_threshold(t, "percentile_99") == t["percentile_99"]
    with pytest.raises(ThresholdError, match="available: percentile_95, percentile_99, mean_std_3, iqr_1.5, fpr_1"):
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
    report = threshold_report(scores, ThresholdsConfig(strategy="iqr_1.5"), {"map": "ssim"})
    assert report["strategy"] == "iqr_1.5"
    assert report["threshold"] == pytest.approx(0.325 + 1.5 * 0.15)
    assert report["thresholds"] == compute_thresholds(scores)
    assert report["validation_scores"] == {
        "count": 4,
        "mean": pytest.approx(0.25),
        "std": pytest.approx(np.std(scores, ddof=1)),
        "min": 0.1,
        "max": 0.4,
    }


# --------------------------------------------------------------------------- the score record


def fake_model(kind: str = "discriminative", image_size: int = 32) -> SimpleNamespace:
    """What score_record reads of a detector: its input size and how it resolves score.map."""
    return SimpleNamespace(image_size=image_size, map_kind=DETECTORS[kind].map_kind)


def write_thresholds(path, score: ScoreConfig | None = None, scores=(0.1, 0.2, 0.3, 0.4)):
    write_json(
        path, threshold_report(np.array(scores), ThresholdsConfig(), score_record(score or ScoreConfig(), fake_model()))
    )
    return path


def test_score_record_holds_what_shapes_scores_and_nothing_else() -> None:
    record = score_record(ScoreConfig(), fake_model())
    score_fields = {f.name for f in dataclasses.fields(ScoreConfig)}
    assert set(record) == (score_fields - {"batch_size"}) | {"image_size"}
    assert record["map"] == "head" and record["image_size"] == 32  # auto resolved for the kind
    # Spelling out what auto means, or another batch size, changes no score: same record.
    assert score_record(ScoreConfig(map="head", batch_size=3), fake_model()) == record
    # Every other field does, and so does the model's input size.
    changed = {
        "map": "ssim",
        "ssim_window": 7,
        "combined_ssim_weight": 0.25,
        "smoothing_sigma": 1.5,
        "image_score": "max",
        "topk_percent": 2.0,
    }
    assert set(changed) == score_fields - {"batch_size"}  # a new ScoreConfig field needs a line here
    for name, value in changed.items():
        other = score_record(dataclasses.replace(ScoreConfig(), **{name: value}), fake_model())
        assert other[name] == value and {k for k in record if record[k] != other[k]} == {name}
    assert score_record(ScoreConfig(), fake_model(image_size=64))["image_size"] == 64


def test_thresholds_json_records_score_params_and_validation_source(tmp_path) -> None:
    path = write_thresholds(tmp_path / "thresholds.json", ScoreConfig(smoothing_sigma=2.0))
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT_VERSION == 2
    assert raw["score"] == score_record(ScoreConfig(smoothing_sigma=2.0), fake_model())
    assert raw["validation"] == {"source": VALIDATION_SOURCE, "images": 4}
    assert "never test images" in VALIDATION_SOURCE and "val_fraction" in VALIDATION_SOURCE
    assert raw["threshold"] == raw["thresholds"][raw["strategy"]]  # the keys older readers used are kept

    t = read_thresholds(path, category="weave")
    assert (t.strategy, t.threshold, t.candidates) == (raw["strategy"], raw["threshold"], raw["thresholds"])
    assert (t.score, t.validation_images, t.normal_score_min, t.where) == (raw["score"], 4, 0.1, str(path))
    t.require_score(
        score_record(ScoreConfig(smoothing_sigma=2.0, batch_size=1), fake_model()), category="weave"
    )  # same params: fine


def test_other_score_params_are_refused_naming_file_keys_values_and_what_to_run(tmp_path) -> None:
    path = write_thresholds(tmp_path / "thresholds.json", ScoreConfig(smoothing_sigma=4.0))
    t = read_thresholds(path, category="weave")
    now = score_record(ScoreConfig(smoothing_sigma=2.0, image_score="max"), fake_model())
    with pytest.raises(ThresholdsMismatchError) as info:
        t.require_score(now, category="weave", user="evaluate")
    message = str(info.value)
    assert str(path) in message and "than evaluate uses now" in message
    assert f"smoothing_sigma is 4.0 in {path} but 2.0 now" in message
    assert f"image_score is 'topk_mean' in {path} but 'max' now" in message
    assert "dvc repro thresholds@weave" in message
    assert isinstance(info.value, UserError)  # stages print it and exit 2, no traceback
    # Another model (kind or input size) is refused the same way.
    with pytest.raises(ThresholdsMismatchError, match=r"image_size is 32 .* but 64 now"):
        t.require_score(score_record(ScoreConfig(smoothing_sigma=4.0), fake_model(image_size=64)))
    with pytest.raises(ThresholdsMismatchError, match=r"map is 'head' .* but 'ssim' now"):
        t.require_score(score_record(ScoreConfig(smoothing_sigma=4.0), fake_model(kind="reconstruction")))


def test_old_and_broken_files_fail_with_a_message_not_a_key_error(tmp_path) -> None:
    old = tmp_path / "old.json"  # what the thresholds stage wrote before the record existed
    old.write_text(
        json.dumps(
            {
                "strategy": "percentile_99",
                "threshold": 0.5,
                "thresholds": {"percentile_99": 0.5},
                "validation_scores": {"count": 4, "min": 0.1, "max": 0.5, "mean": 0.3, "std": 0.1},
            }
        )
    )
    with pytest.raises(
        ThresholdsMismatchError, match=rf"{old} does not record the score params.*Run `dvc repro thresholds@weave`"
    ):
        read_thresholds(old, category="weave")
    cases = {
        "not_json.json": ("{not json", "is not valid JSON"),
        "no_threshold.json": (json.dumps({"strategy": "x"}), "is not a thresholds file"),
        "list.json": ("[1, 2]", "is not a thresholds file"),
        "bad_validation.json": (
            json.dumps({"threshold": 0.5, "strategy": "s", "score": {}, "validation": {}}),
            "is malformed",
        ),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ThresholdError, match=expected):
            read_thresholds(tmp_path / name)
    with pytest.raises(
        ThresholdError, match=r"missing\.json is missing; run `dvc repro thresholds@weave` \(or `dvc pull`\)"
    ):
        read_thresholds(tmp_path / "missing.json", category="weave")
    assert parse_thresholds(threshold_report([0.1, 0.2], ThresholdsConfig(), {"map": "l2"}), "memory").score == {
        "map": "l2"
    }
