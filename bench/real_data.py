"""Real data decides: the whole pipeline, as a user runs it, per configuration and dataset.

For every configuration in ``CONFIGS`` and every dataset (each MVTec-layout set under
``../shared/datasets/<name>/<category>/`` and the built-in synthetic set), this clones the
repository's committed state into a scratch folder and runs, with this virtualenv's ``dvc``
and ``python`` on PATH::

    dvc exp run -S model.kind=patchcore <the configuration's -S flags> <the dataset's -S flags>

from fetch to report (export check included), exactly as a user would. From each run it keeps

* image AUROC, pixel AUROC and AU-PRO (``metrics/summary.json``, mean over the set's categories);
* fit seconds and bank size (``dvclive/train/<category>/metrics.json``, summed / mean over categories);
* whole-pipeline seconds (wall time of ``dvc exp run``) and the seconds of each stage (from the
  time each ``Running stage`` line appears to the next one);
* peak RSS: the largest resident set of any process the run started (``RUSAGE_CHILDREN``).

Results go to ``bench/results/real_data.json`` (merged by configuration and dataset, so a
rerun of a subset keeps the rest), and the README's real-data table is regenerated from it
(``--table`` does only that; ``tests/test_real_data_table.py`` checks the two agree). The
``real mean`` row of a configuration averages the real sets only, never the built-in one, and
only when every real set present ran with that configuration. Absent sets are skipped and said so.

Run: ``make bench-real`` or ``python bench/real_data.py [--configs NAME ...] [--datasets NAME ...]``
(``--list`` shows both; a configuration over both real sets takes about 10 minutes on 2 cores).
The clone is of the committed HEAD: commit before measuring a change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from anomaly_spotter.evaluation.readme_table import replace_block  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
OUT = REPO / "bench" / "results" / "real_data.json"
README = REPO / "README.md"
BIN = Path(sys.executable).parent
BEGIN = "<!-- real-data-table: generated from bench/results/real_data.json by `make bench-real`; do not edit -->"
END = "<!-- /real-data-table -->"
BUILT_IN = "built-in"
METRICS = ("image_auroc", "pixel_auroc", "au_pro")

# Each configuration is the -S flags added to `-S model.kind=patchcore`; "default" adds none, so it
# is what a user gets from that one flag. The others are named by what they change from it.
CONFIGS: dict[str, list[str]] = {
    "default": [],
    "lite2_256_2%": ["model.backbone=efficientnet_lite2", "model.coreset_ratio=0.02", "preprocess.image_size=256"],
    "lite0_320_1%": ["model.backbone=efficientnet_lite0", "model.coreset_ratio=0.01", "preprocess.image_size=320"],
}
# Around the candidate (lite0, 320 px, 1 %, the first to beat the old preset on tire) ...
_LITE0 = CONFIGS["lite0_320_1%"]
CONFIGS |= {
    "lite1_320_1%": ["model.backbone=efficientnet_lite1", *_LITE0[1:]],
    "lite0_384_1%": [*_LITE0[:2], "preprocess.image_size=384"],
    "lite2_384_2%": ["model.backbone=efficientnet_lite2", "model.coreset_ratio=0.02", "preprocess.image_size=384"],
}
# ... and one change at a time from the defaults (lite2, 320 px, 2 %, layers 2+3, 3x3 window, 9 neighbours).
CONFIGS |= {
    "default_stride4": ["model.layers=[1,2,3]"],  # a stride-4 tap for small defects
    "default_window5": ["model.patch_window=5"],
    "default_sigma8": ["score.smoothing_sigma=8"],
    "default_nn0": ["model.num_neighbours=0"],  # plain max distance as the image score
    "default_1%": ["model.coreset_ratio=0.01"],
    # The greedy coreset exact over all patches, and its two stages in groups of 2**17 patches.
    "default_exact_coreset": ["model.coreset_group_patches=0"],
    "default_groups_2^17": ["model.coreset_group_patches=131072"],
}
# The results also hold rows no configuration here makes, from commits whose grouped coreset kept a fixed
# share of each group (no second stage; check out the row's commit to reproduce it): "fixed_quota_2^19", the
# old default (tire's 336k patches were one group there, so the exact greedy), and "fixed_quota_2^17".


def real_datasets() -> dict[str, list[str]]:
    """``{name: -S flags}`` for each MVTec-layout set under ``../shared/datasets`` (one category each)."""
    found: dict[str, list[str]] = {}
    for root in sorted(p for p in SHARED.glob("*") if p.is_dir()):
        categories = sorted(c.name for c in root.iterdir() if (c / "train" / "good").is_dir())
        if categories:
            found[root.name] = [
                "data.source=folder",
                f"data.root={root}",
                f"data.categories=[{','.join(categories)}]",
            ]
    return found


def cpu_description() -> str:
    """E.g. ``AMD EPYC, AVX2, 2 cores``: what every figure here depends on (from ``/proc/cpuinfo``)."""
    info = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").is_file() else ""
    name = m.group(1).strip() if (m := re.search(r"model name\s*:\s*(.+)", info)) else platform.machine()
    flags = set(m.group(1).split()) if (m := re.search(r"flags\s*:\s*(.+)", info)) else set()
    isa = [
        label
        for flag, label in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "bfloat16"), ("amx_tile", "AMX"))
        if flag in flags
    ]
    return f"{name}, {' + '.join(isa) or 'no AVX2'}, {os.cpu_count()} cores"


def dataset_flags() -> dict[str, list[str]]:
    return {**real_datasets(), BUILT_IN: []}


def _clone(workdir: Path) -> Path:
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    for key, value in (("user.email", "bench@example.com"), ("user.name", "bench")):
        subprocess.run(["git", "-C", str(clone), "config", key, value], check=True)
    return clone


def _stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds per stage: from its ``Running stage 'x'`` line to the next stage's (or the end)."""
    starts = [(t, m.group(1)) for t, line in lines if (m := re.match(r"Running stage '([^']+)'", line))]
    seconds: dict[str, float] = {}
    for (tick, name), (tock, _) in zip(starts, [*starts[1:], (end, "")], strict=True):
        seconds[name] = round(tock - tick, 2)
    return seconds


def run_one(config: str, dataset: str) -> dict[str, Any]:
    """One ``dvc exp run`` of ``config`` on ``dataset`` in a fresh clone; its figures."""
    flags = ["model.kind=patchcore", *CONFIGS[config], *dataset_flags()[dataset]]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_ALBUMENTATIONS_UPDATE": "1"}
    with tempfile.TemporaryDirectory(prefix="real_data_") as tmp:
        clone = _clone(Path(tmp))
        cmd = [str(BIN / "dvc"), "exp", "run", *[part for flag in flags for part in ("-S", flag)]]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = [(time.perf_counter(), line.rstrip()) for line in proc.stdout]
        proc.wait()
        end = time.perf_counter()
        if proc.returncode:
            tail = "\n".join(line for _, line in lines[-40:])
            raise SystemExit(f"{config} on {dataset}: `{' '.join(cmd)}` failed:\n{tail}")
        commit = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        summary = json.loads((clone / "metrics" / "summary.json").read_text(encoding="utf-8"))
        categories = [k for k in summary["image_auroc"] if k != "mean"]
        train = [
            json.loads((clone / "dvclive" / "train" / c / "metrics.json").read_text(encoding="utf-8"))
            for c in categories
        ]
    return {
        "config": config,
        "dataset": dataset,
        "flags": flags,
        "commit": commit,
        "cpu": cpu_description(),  # per row: rows measured on different machines share one file
        "categories": categories,
        **{key: summary[key]["mean"] for key in METRICS},
        "fit_seconds": round(sum(t["fit_seconds"] for t in train), 2),
        "bank_size": round(sum(t["bank_size"] for t in train) / len(train)),
        "whole_run_seconds": round(end - started, 2),
        "stage_seconds": _stage_seconds(lines, end),
    }


def _measured_in_child(config: str, dataset: str) -> dict[str, Any]:
    """``run_one`` in a child process, so its peak RSS is that run's alone."""
    result = subprocess.run(
        [sys.executable, __file__, "--one", config, dataset], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise SystemExit(result.stderr or result.stdout)
    return json.loads(result.stdout.strip().splitlines()[-1])


def real_means(runs: list[dict[str, Any]], real_sets: list[str]) -> dict[str, dict[str, float]]:
    """Per configuration, the mean of each metric over ``real_sets`` (only where all of them ran)."""
    means: dict[str, dict[str, float]] = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        rows = {r["dataset"]: r for r in runs if r["config"] == config and r["dataset"] in real_sets}
        if real_sets and len(rows) == len(real_sets):
            means[config] = {k: sum(rows[d][k] for d in real_sets) / len(real_sets) for k in METRICS}
            means[config]["whole_run_seconds"] = sum(rows[d]["whole_run_seconds"] for d in real_sets) / len(real_sets)
    return means


def _config_order(name: str) -> int:
    return list(CONFIGS).index(name) if name in CONFIGS else len(CONFIGS)


def table(results: dict[str, Any]) -> str:
    """The README's markdown tables: one row per configuration and dataset; then, best first, each
    configuration's mean over the real sets (the three metrics averaged is what defaults are chosen by)."""
    lines = [
        "| configuration | dataset | image AUROC | pixel AUROC | AU-PRO | fit s | whole run s | peak RSS MB | bank "
        "| commit | CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        results["runs"], key=lambda r: (_config_order(r["config"]), r["dataset"] == BUILT_IN, r["dataset"])
    ):
        lines.append(
            f"| {r['config']} | {r['dataset']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['au_pro']:.3f} "
            f"| {r['fit_seconds']:.1f} | {r['whole_run_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['bank_size']} "
            f"| {r.get('commit', '')} | {r['cpu'].rsplit(', ', 2)[1]} |"
        )
    lines += [
        "",
        "| configuration | real mean: image AUROC | pixel AUROC | AU-PRO | the three averaged | whole run s |",
        "|---|---|---|---|---|---|",
    ]
    means = results["real_mean"]
    for config in sorted(means, key=lambda name: -sum(means[name][k] for k in METRICS)):
        mean = means[config]
        lines.append(
            f"| {config} | {mean['image_auroc']:.3f} | {mean['pixel_auroc']:.3f} | {mean['au_pro']:.3f} "
            f"| **{sum(mean[k] for k in METRICS) / len(METRICS):.3f}** | {mean['whole_run_seconds']:.1f} |"
        )
    return "\n".join(lines)


def write_readme_table(results: dict[str, Any]) -> None:
    text = replace_block(
        README.read_text(encoding="utf-8"), table(results), source=str(README), begin=BEGIN, end=END, name="real-data"
    )
    README.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--datasets", nargs="+", help="default: every real set present and the built-in one")
    parser.add_argument("--list", action="store_true", help="print the configurations and datasets, then stop")
    parser.add_argument("--table", action="store_true", help="only rewrite the README table from the results")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        figures = run_one(*args.one)
        figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
        print(json.dumps(figures))
        return
    available = dataset_flags()
    if args.list:
        for name, flags in CONFIGS.items():
            print(f"config  {name}: -S model.kind=patchcore {' '.join('-S ' + f for f in flags)}")
        for name, flags in available.items():
            print(f"dataset {name}: {' '.join('-S ' + f for f in flags) or '(built-in defaults)'}")
        return
    results: dict[str, Any] = json.loads(OUT.read_text(encoding="utf-8")) if OUT.is_file() else {"runs": []}
    if not args.table:
        wanted = args.datasets or list(available)
        for name in wanted:
            if name not in available:
                print(f"skipped {name}: not found under {SHARED} (absent sets are skipped)")
        for config in args.configs:
            for dataset in (d for d in wanted if d in available):
                print(f"running {config} on {dataset} ...", flush=True)
                figures = _measured_in_child(config, dataset)
                print(
                    f"  image {figures['image_auroc']:.3f} pixel {figures['pixel_auroc']:.3f} "
                    f"AU-PRO {figures['au_pro']:.3f}; fit {figures['fit_seconds']:.1f} s, whole run "
                    f"{figures['whole_run_seconds']:.1f} s, peak RSS {figures['peak_rss_mb']:.0f} MB, "
                    f"stages {figures['stage_seconds']}",
                    flush=True,
                )
                runs = [r for r in results["runs"] if (r["config"], r["dataset"]) != (config, dataset)]
                results["runs"] = [*runs, figures]
                results["real_sets"] = sorted(real_datasets())
                results["skipped"] = sorted(
                    {d.name for d in SHARED.glob("*") if d.is_dir()} - set(results["real_sets"])
                )
                results["real_mean"] = real_means(results["runs"], results["real_sets"])
                OUT.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_readme_table(results)
    print(f"{OUT} and the README table written")


if __name__ == "__main__":
    main()
