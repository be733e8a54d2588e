import pytest
import yaml

from anomaly_spotter.config import load_params, parse_params
from anomaly_spotter.errors import ConfigError
from conftest import REPO


def test_repository_params_are_valid_for_every_category():
    params = load_params(REPO / "params.yaml")
    for category in params.data.categories:
        assert load_params(REPO / "params.yaml", category).data.categories == params.data.categories


def test_defaults_and_types():
    params = parse_params({"train": {"lr": 1}})  # an int is a fine float
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.model.skips == ()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, "trian: unknown key"),
        ({"loss": {"ssmi": 0.7}}, "loss.ssmi: unknown key"),
        ({"train": {"epochs": "10"}}, "train.epochs: expected an integer"),
        ({"train": {"epochs": 1.5}}, "train.epochs: expected an integer"),
        ({"train": {"amp": "yes"}}, "train.amp: expected true or false"),
        ({"train": {"lr": 0}}, "train.lr: must be > 0"),
        ({"train": {"optimizer": "adamm"}}, "train.optimizer: 'adamm' is not one of adam, adamw, sgd"),
        ({"preprocess": {"val_fraction": 1.5}}, "preprocess.val_fraction: must be <= 0.9"),
        ({"preprocess": {"image_size": 16}}, "preprocess.image_size: must be 0 (the detector kind's own) or >= 32"),
        ({"model": {"kind": "patchcor"}}, "model.kind: 'patchcor' is not one of reconstruction, discriminative"),
        ({"model": {"skips": [1, 5]}}, "model.skips: levels are 1, 2 or 3"),
        ({"loss": {"mse": 0, "ssim": 0}}, "at least one of"),
        ({"thresholds": {"strategy": "percentile_90"}}, "thresholds.strategy: 'percentile_90' is not computed"),
        ({"data": {"categories": []}}, "list at least one category"),
        ({"data": {"categories": ["a/b"]}}, "not a valid folder name"),
        ({"presets": {"weave": {"train": {"epoch": 3}}}}, "presets.weave: train.epoch: unknown key"),
        ({"presets": {"weave": {"data": {"root": "x"}}}}, "presets.weave.data: a preset may override only"),
    ],
)
def test_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    assert message in str(info.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_params({"train": {"epochs": 0, "lr": -1, "optimizer": "x"}, "score": {"ssim_window": 1}})
    assert len(info.value.problems) == 4


def test_image_size_zero_is_the_detector_kinds_own_side():
    assert parse_params({}).preprocess.image_size == 128  # the autoencoders: the built-in set's side
    assert parse_params({"model": {"kind": "patchcore"}}).preprocess.image_size == 320
    given = {"model": {"kind": "patchcore"}, "preprocess": {"image_size": 256}}
    assert parse_params(given).preprocess.image_size == 256
    raw = {"presets": {"washer": {"model": {"kind": "patchcore"}}}}  # a preset's kind brings its side
    assert parse_params(raw, "washer").preprocess.image_size == 320
    assert parse_params(raw, "weave").preprocess.image_size == 128


def test_preset_is_merged_over_defaults():
    raw = {"train": {"epochs": 5, "lr": 0.01}, "presets": {"marble": {"train": {"epochs": 9}}}}
    assert parse_params(raw, "marble").train.epochs == 9
    assert parse_params(raw, "marble").train.lr == 0.01
    assert parse_params(raw, "weave").train.epochs == 5


def test_unknown_category_is_rejected():
    with pytest.raises(ConfigError, match="'carpet' is not in data.categories"):
        parse_params({}, "carpet")


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    good = tmp_path / "p.yaml"
    good.write_text(yaml.safe_dump({"train": {"epochs": 3}}))
    assert load_params(good).train.epochs == 3


def test_params_yaml_states_exactly_the_dataclass_defaults():
    """Defaults live in config.py once; params.yaml lists every value for DVC. They must agree."""
    from anomaly_spotter.config import Params, to_dict

    listed = yaml.safe_load((REPO / "params.yaml").read_text())
    listed.pop("presets", None)
    assert listed == to_dict(Params())


def test_a_percentile_of_100_is_one_rule_everywhere():
    """config and thresholds share check_percentile: the largest normal score is a valid threshold."""
    from anomaly_spotter.evaluation.thresholds import compute_thresholds

    assert parse_params(
        {"thresholds": {"percentiles": [100.0], "strategy": "percentile_100"}}
    ).thresholds.percentiles == (100.0,)
    assert compute_thresholds([1.0, 2.0, 3.0], percentiles=(100.0,))["percentile_100"] == 3.0
    with pytest.raises(ConfigError, match=r"thresholds.percentiles: 101 is not in \[0, 100\]"):
        parse_params({"thresholds": {"percentiles": [101.0]}})
