"""The README's real-data table is exactly what bench/real_data.py writes from its results file."""

import importlib.util
import json

from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("real_data_bench", REPO / "bench" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_real_data_table_is_the_results_file():
    bench = _bench()
    results = json.loads((REPO / "bench" / "results" / "real_data.json").read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0].strip()
    assert block == bench.table(results), "README's real-data table is stale: run `python bench/real_data.py --table`"


def test_real_mean_averages_the_real_sets_only_and_only_when_all_ran():
    bench = _bench()
    row = {"image_auroc": 0.8, "pixel_auroc": 0.9, "au_pro": 0.7, "whole_run_seconds": 100.0}
    runs = [
        {**row, "config": "a", "dataset": "tile"},
        {**row, "image_auroc": 1.0, "whole_run_seconds": 50.0, "config": "a", "dataset": "tire"},
        {**row, "image_auroc": 0.0, "config": "a", "dataset": bench.BUILT_IN},
        {**row, "config": "b", "dataset": "tile"},  # tire missing: no mean for b
    ]
    means = bench.real_means(runs, ["tile", "tire"])
    assert set(means) == {"a"}
    assert means["a"]["image_auroc"] == 0.9 and means["a"]["whole_run_seconds"] == 75.0


def test_stage_seconds_run_from_each_stage_line_to_the_next():
    bench = _bench()
    lines = [(1.0, "Running stage 'fetch@a':"), (1.5, "> python ..."), (4.0, "Running stage 'train@a':")]
    assert bench._stage_seconds(lines, 10.0) == {"fetch@a": 3.0, "train@a": 6.0}
