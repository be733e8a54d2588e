"""Stage scripts as a user runs them: bad input gives a clear message and exit status 2."""

import subprocess
import sys

import yaml

from conftest import REPO, tool_env


def run_stage(script, *args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_wrong_typed_param_stops_the_stage_naming_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": "many", "lr": -1}}))
    result = run_stage(
        "train.py",
        "--category",
        "weave",
        "--data",
        "d",
        "--model",
        "m.pt",
        "--checkpoints",
        "c",
        "--logs",
        "l",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "train.epochs: expected an integer, got 'many'" in result.stderr
    assert "train.lr: must be > 0.0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_unknown_synthetic_category(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"categories": ["carpet"]}}))
    result = run_stage("fetch.py", "--category", "carpet", "--out", "data/raw/carpet", cwd=tmp_path)
    assert result.returncode == 2
    assert "'carpet' is not a synthetic category" in result.stderr
    assert "valid: weave, marble, washer" in result.stderr
    assert not (tmp_path / "data" / "raw" / "carpet").exists()


def test_category_not_in_params(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    result = run_stage("fetch.py", "--category", "wave", "--out", "data/raw/wave", cwd=tmp_path)
    assert result.returncode == 2
    assert "'wave' is not in data.categories" in result.stderr


def test_missing_preprocessed_data_names_the_file(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({}))
    result = run_stage(
        "train.py",
        "--category",
        "weave",
        "--data",
        "nowhere",
        "--model",
        "m.pt",
        "--checkpoints",
        "c",
        "--logs",
        "l",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "nowhere/index.json is missing" in result.stderr
