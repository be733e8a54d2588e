"""The README states only results the committed pipeline holds."""

import hashlib
import json

import pytest
import yaml

from anomaly_spotter.config import load_params
from anomaly_spotter.errors import UserError
from anomaly_spotter.evaluation.readme_table import BEGIN, END, main, replace_block, results_table
from conftest import REPO


def committed_summary() -> dict:
    return json.loads((REPO / "metrics" / "summary.json").read_text(encoding="utf-8"))


def test_readme_results_table_is_the_committed_summary():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    params = load_params(REPO / "params.yaml")
    expected = results_table(committed_summary(), params.data.categories, fpr_limit=params.evaluate.pro_fpr_limit)
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == expected, "README's results table is stale: run `make readme` after `dvc repro`"


def test_committed_summary_is_the_one_dvc_lock_records():
    lock = yaml.safe_load((REPO / "dvc.lock").read_text(encoding="utf-8"))
    outs = {o["path"]: o["md5"] for o in lock["stages"]["report"]["outs"]}
    actual = hashlib.md5((REPO / "metrics" / "summary.json").read_bytes()).hexdigest()
    assert outs["metrics/summary.json"] == actual, (
        "metrics/summary.json differs from dvc.lock: run `dvc repro` and commit both"
    )


def test_table_rows_follow_the_categories_then_the_mean():
    summary = {
        "image_auroc": {"b": 0.9996, "a": 0.5, "mean": 0.7498},
        "pixel_auroc": {"a": 0.25, "b": 1.0, "mean": 0.625},
        "au_pro": {"a": float("nan"), "b": 0.125},
        "f1": {"a": 0.0, "b": 1.0, "mean": 0.5},
        "test_images": {"a": 10, "b": 30},
    }
    lines = results_table(summary, ["b", "a"]).splitlines()
    assert lines[2] == "| b | 1.000 | 1.000 | 0.125 | 1.000 | 30 |"
    assert lines[3] == "| a | 0.500 | 0.250 | n/a | 0.000 | 10 |"
    assert lines[4] == "| **mean** | 0.750 | 0.625 | n/a | 0.500 | 40 |"


def test_main_rewrites_only_the_block(tmp_path):
    summary = {
        "image_auroc": {"weave": 0.9},
        "pixel_auroc": {"weave": 0.8},
        "au_pro": {"weave": 0.7},
        "f1": {"weave": 0.6},
        "test_images": {"weave": 4},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "params.yaml").write_text("data: {categories: [weave]}\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\noutro\n")
    main(
        [
            "--summary",
            str(tmp_path / "summary.json"),
            "--readme",
            str(readme),
            "--params",
            str(tmp_path / "params.yaml"),
        ]
    )
    assert readme.read_text() == f"intro\n{BEGIN}\n{results_table(summary, ['weave'])}\n{END}\noutro\n"


@pytest.mark.parametrize("text", ["no markers", f"{END}\n{BEGIN}\n", f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n"])
def test_a_readme_without_one_well_formed_block_is_refused(text):
    with pytest.raises(UserError, match="README.md: needs exactly one results block"):
        replace_block(text, "table")
