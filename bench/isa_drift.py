"""Cross-machine drift: how far models and metrics move when only the CPU's instruction set changes.

Same code, same params, same data; only the kernels differ. On one machine, other x86 CPUs are
emulated by capping what PyTorch and oneDNN may use:

==============  =====================================================  ==========================
ISA level       environment                                            what it stands for
==============  =====================================================  ==========================
``native``      (nothing)                                              this CPU as it is
``avx512``      ``ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=        AVX-512 without bfloat16
                AVX512_CORE``                                          instructions (older Xeons)
``avx2``        ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``   desktops, most laptops
``default``     ``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=       no vector kernels
                SSE41``
==============  =====================================================  ==========================

``train.amp: true`` (the default) trains in bfloat16 only where oneDNN reports a bfloat16 path
(``runtime.autocast_dtype``), so on ``avx2`` and ``default`` it trains in float32, as a real
AVX2 machine would; each row says which precision it actually used.

One `dvc repro` of a clone of the committed project (built-in synthetic data, three categories)
fetches and preprocesses natively; every run copies it with its data and runs train,
thresholds, evaluate and report under its ISA cap (``--runs``; the first is the reference).
Per run this prints, against the reference and against the native run of the same precision:

* whether the fitted weights in ``model.pt`` are bit-identical, and the largest relative change
  of a test image score;
* the largest change over categories of image AUROC, pixel AUROC and AU-PRO;
* image AUROC on nested subsets of the test split (``--subsets``, images per class as
  ``good/defect-per-type``), to see how many test images keep the drift below 0.01.

Run (how the committed results in ``bench/results/isa_drift_*.json`` were made):
    # on each machine, the default kind trained natively; then the two files side by side
    python bench/isa_drift.py --kinds discriminative --runs native/amp --out bench/results/isa_drift_<machine>.json
    python bench/isa_drift.py --compare bench/results/isa_drift_avx512_bf16_machine.json \
        bench/results/isa_drift_avx2_machine.json
    # on one machine: patchcore under two caps, and the test split's sampling noise
    python bench/isa_drift.py --kinds patchcore --runs native/fp32 default/fp32 \
        --out bench/results/isa_drift_patchcore.json
    python bench/isa_drift.py --bootstrap
The full matrix (``--kinds`` all, ``--runs native/amp avx512/amp avx2/amp native/fp32
default/fp32``) takes hours on 2 cores.

A run takes 2 to 30 minutes on 2 cores (float32 training on an AVX2-only CPU and ``default``
are the slow ones).

``--evaluate-only`` separates the two sources of drift: it takes the models this project
already trained (``dvc repro`` first; they come from its DVC cache) and runs only thresholds,
evaluate and report under each ISA cap, so any change comes from scoring, not training:
    python bench/isa_drift.py --evaluate-only --runs native/fp32 default/fp32 \
        --out bench/results/isa_drift_evaluate_only.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

from ablation import parse_set  # bench/ablation.py: --set key=value, parsed like `dvc exp run -S`

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ISAS: dict[str, dict[str, str]] = {
    "native": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
# Each kind as a user switches to it (docs/detectors.md, "The three kinds"); params.yaml's defaults otherwise.
KINDS: dict[str, dict[str, Any]] = {
    "discriminative": {},
    "reconstruction": {"model": {"kind": "reconstruction"}, "anomalies": {"probability": 0.0}},
    "patchcore": {"model": {"kind": "patchcore"}},
}
# Runs as ISA/precision request; the first runs natively and is what the others compare with.
DEFAULT_RUNS = ["native/amp", "avx512/amp", "avx2/amp", "native/fp32", "default/fp32"]
GRADIENT_KINDS = ("discriminative", "reconstruction")  # patchcore learns nothing: no train.amp
METRICS = ("image_auroc", "pixel_auroc", "au_pro")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_vector_flags() -> list[str]:
    """The vector and matrix extensions this CPU reports (what ``native`` means on this machine)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            wanted = ("avx", "amx", "fma", "f16c")
            return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(wanted))
    return []


def tool_env(isa: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env.update(
        ISAS[isa], PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", NO_ALBUMENTATIONS_UPDATE="1", DVC_NO_ANALYTICS="1"
    )
    return env


def precision_used(isa: str, amp: bool) -> str:
    """The dtype training really uses under this cap (asked of the library in a fresh process)."""
    if not amp:
        return "float32"
    code = (
        "import torch; from anomaly_spotter.runtime import autocast_dtype; "
        "print(autocast_dtype(torch.device('cpu')) or 'float32')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**tool_env(isa), "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().replace("torch.", "")


def run(cmd: list[str], cwd: Path, isa: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, check=False, cwd=cwd, env=tool_env(isa), capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} ({isa}) failed:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start


def write_params(clone: Path, override: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from anomaly_spotter.config import deep_merge

    path = clone / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load(path.read_text()), override), sort_keys=False))


def subset_auroc(rows: list[dict[str, str]], good: int, per_defect: int) -> float:
    """Image AUROC on :func:`subset_rows`."""
    taken = subset_rows(rows, good, per_defect)
    return float(roc_auc_score([int(r["label"]) for r in taken], [float(r["score"]) for r in taken]))


def subset_rows(rows: list[dict[str, str]], good: int, per_defect: int) -> list[dict[str, str]]:
    """The rows of the first ``good`` normal and first ``per_defect`` images of each defect type.

    The synthetic set seeds each image by its index, so these are exactly the images a smaller
    ``data.synthetic`` test split would hold.
    """
    return [r for r in rows if int(Path(r["file"]).stem) < (good if r["defect_type"] == "good" else per_defect)]


def bootstrap_table(subsets: list[tuple[int, int]], draws: int = 2000) -> None:
    """Sampling noise of image AUROC: its sd over ``draws`` resamplings (with replacement, per class) of each subset.

    What a test split of that size leaves uncertain about one fixed model, read from the
    committed evaluation (``evaluation/<category>/scores.csv``).
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    print(f"# image AUROC (bootstrap sd over {draws} resamplings); test images per class: good/defect-per-type")
    print("| category | " + " | ".join(f"{g}/{d}" for g, d in subsets) + " |")
    for cat in params["data"]["categories"]:
        with open(ROOT / "evaluation" / cat / "scores.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        cells = []
        for g, d in subsets:
            taken = subset_rows(rows, g, d)
            labels = np.array([int(r["label"]) for r in taken])
            scores = np.array([float(r["score"]) for r in taken])
            rng = np.random.default_rng(0)
            normal, defect = scores[labels == 0], scores[labels == 1]
            draws_auc = [
                roc_auc_score(
                    np.r_[np.zeros(len(normal)), np.ones(len(defect))],
                    np.r_[rng.choice(normal, len(normal)), rng.choice(defect, len(defect))],
                )
                for _ in range(draws)
            ]
            cells.append(f"{roc_auc_score(labels, scores):.4f} ({np.std(draws_auc):.4f})")
        print(f"| {cat} | " + " | ".join(cells) + " |")


def weights_sha256(model_path: Path) -> str:
    """Hash of the fitted tensors only: model.pt also records the kernels it ran on, which differ by design."""
    state = torch.load(model_path, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def collect(clone: Path, categories: list[str], subsets: list[tuple[int, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cat in categories:
        metrics = json.loads((clone / "metrics" / f"{cat}.json").read_text())
        with open(clone / "evaluation" / cat / "scores.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        out[cat] = {
            **{k: metrics[k] for k in METRICS},
            "weights_sha256": weights_sha256(clone / "models" / cat / "model.pt"),
            "threshold": json.loads((clone / "models" / cat / "thresholds.json").read_text())["threshold"],
            "scores": [float(r["score"]) for r in rows],
            "subset_auroc": {f"{g}/{d}": subset_auroc(rows, g, d) for g, d in subsets},
        }
    return out


def compare(run: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Largest differences over categories between two runs' results."""
    cats = list(ref)
    out: dict[str, Any] = {"weights_identical": all(run[c]["weights_sha256"] == ref[c]["weights_sha256"] for c in cats)}
    for key in METRICS:
        out[key] = max(abs(run[c][key] - ref[c][key]) for c in cats)
    out["score_rel"] = max(
        float(np.max(np.abs(np.subtract(run[c]["scores"], ref[c]["scores"])) / (np.abs(ref[c]["scores"]) + 1e-12)))
        for c in cats
    )
    out["subset_auroc"] = {
        s: max(abs(run[c]["subset_auroc"][s] - ref[c]["subset_auroc"][s]) for c in cats)
        for s in ref[cats[0]]["subset_auroc"]
    }
    return out


def write_results(path: Path, commit: str, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    payload = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_vector_flags(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "commit": commit,
        "set": args.assignments,
        "subsets": args.subsets,
        "runs": results,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")


def evaluate_only(
    base: Path, categories: list[str], args: argparse.Namespace, subsets: list[tuple[int, int]], commit: str
) -> list[dict[str, Any]]:
    """Thresholds, evaluate and report of the committed models under each ISA cap of ``--runs``.

    ``base`` is a clone of the project that shares its DVC cache, so ``dvc checkout`` restores
    the trained models and processed data without training. The test split stays the committed
    one (``--subsets`` larger than it are skipped).
    """
    subprocess.run(
        [str(BIN / "dvc"), "cache", "dir", "--local", str(ROOT / ".dvc" / "cache")],
        cwd=base,
        env=tool_env("native"),
        check=True,
    )
    run([str(BIN / "dvc"), "checkout"], base, "native")
    status = subprocess.run(
        [str(BIN / "dvc"), "status", "--json"],
        cwd=base,
        env=tool_env("native"),
        capture_output=True,
        text=True,
        check=True,
    )
    if json.loads(status.stdout or "{}"):
        raise SystemExit(
            f"the committed pipeline is not up to date in {ROOT}'s cache (`dvc status` lists changes): "
            "run `dvc repro` and commit first"
        )
    params = yaml.safe_load((base / "params.yaml").read_text())
    synthetic = params["data"]["synthetic"]
    subsets = [(g, d) for g, d in subsets if g <= synthetic["test_good"] and d <= synthetic["test_defect_per_type"]]
    stages = [f"{stage}@{c}" for c in categories for stage in ("thresholds", "evaluate")] + ["report"]
    results: list[dict[str, Any]] = []
    reference: dict[str, Any] | None = None
    for spec in args.runs:
        isa = spec.partition("/")[0]
        if isa not in ISAS:
            raise SystemExit(f"--runs {spec!r}: expected <{'|'.join(ISAS)}>/<amp|fp32>")
        clone = base.parent / f"evaluate-{isa}"
        shutil.copytree(base, clone, symlinks=True)
        seconds = run([str(BIN / "dvc"), "repro", "--force", "--single-item", *stages], clone, isa)
        row = {
            "kind": params["model"]["kind"],
            "isa": isa,
            "evaluate_only": True,
            "seconds": round(seconds),
            "categories": collect(clone, categories, subsets),
        }
        shutil.rmtree(clone)
        if reference is not None:
            row["against"] = {"reference": compare(row["categories"], reference["categories"])}
        reference = reference or row
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "categories"}), flush=True)
        if args.out:
            write_results(Path(args.out), commit, args, results)
    return results


def compare_machines(first: Path, second: Path) -> None:
    """Per category, how far the first run of each model kind moved between two results files.

    Two machines' files of the same project commit and params are two CPUs training the same
    experiment; this prints the table docs/reproducibility.md's "Reproducibility across machines" quotes.
    """
    a, b = (json.loads(path.read_text()) for path in (first, second))
    print(f"# {first.name}: {a['cpu']} {' '.join(a.get('cpu_flags', []))}, project {a['commit']}")
    print(f"# {second.name}: {b['cpu']} {' '.join(b.get('cpu_flags', []))}, project {b['commit']}")
    for run_a in a["runs"]:
        run_b = next((r for r in b["runs"] if r["kind"] == run_a["kind"]), None)
        if run_b is None:
            continue
        print(f"\n{run_a['kind']}: {run_a['isa']}/{run_a['precision']} vs {run_b['isa']}/{run_b['precision']}")
        print(
            "| category | weights identical | "
            + " | ".join(f"{k} (change)" for k in METRICS)
            + " | "
            + " | ".join(
                f"image AUROC {s} (change)"
                for s in run_a["categories"][next(iter(run_a["categories"]))]["subset_auroc"]
            )
            + " |"
        )
        for cat, ca in run_a["categories"].items():
            cb = run_b["categories"][cat]
            cells = [f"{cb[k]:.4f} ({cb[k] - ca[k]:+.4f})" for k in METRICS]
            cells += [
                f"{cb['subset_auroc'][s]:.4f} ({cb['subset_auroc'][s] - ca['subset_auroc'][s]:+.4f})"
                for s in ca["subset_auroc"]
            ]
            print(
                f"| {cat} | {'yes' if ca['weights_sha256'] == cb['weights_sha256'] else 'no'} | "
                + " | ".join(cells)
                + " |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument(
        "--runs",
        nargs="+",
        default=DEFAULT_RUNS,
        metavar="ISA/AMP",
        help=f"ISA level ({', '.join(ISAS)}) / amp (train.amp true) or fp32 (false); the first is the reference",
    )
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE", help="applied to every run"
    )
    parser.add_argument(
        "--subsets", nargs="+", default=["24/8", "48/16", "96/32"], help="test images per class: good/defect-per-type"
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="score this project's trained models (its DVC cache) under each cap: no training; --kinds is ignored",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar="RESULTS.json",
        help="no runs: compare the first run of each kind in two results files (two machines) and exit",
    )
    parser.add_argument(
        "--bootstrap",
        action="store_true",
        help=(
            "no runs: bootstrap sd of image AUROC on --subsets of this project's evaluation/<cat>/scores.csv, and exit"
        ),
    )
    parser.add_argument("--out", help="JSON results")
    args = parser.parse_args()
    if args.bootstrap:
        bootstrap_table([tuple(int(n) for n in s.split("/")) for s in args.subsets])
        return
    if args.compare:
        compare_machines(*(Path(f) for f in args.compare))
        return
    subsets = [tuple(int(n) for n in s.split("/")) for s in args.subsets]
    override = parse_set(args.assignments)
    # The test split must hold the largest subset.
    big_good, big_defect = max(g for g, _ in subsets), max(d for _, d in subsets)
    if not args.evaluate_only:  # evaluate-only scores the committed test split
        override.setdefault("data", {}).setdefault("synthetic", {}).update(
            test_good=big_good, test_defect_per_type=big_defect
        )

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(
        f"# CPU {cpu_model()} ({' '.join(cpu_vector_flags())}), {os.cpu_count()} cores; project {commit}; "
        f"--set {' '.join(args.assignments) or '(none)'}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(base)], check=True)
        if override:  # a rewrite drops params.yaml's comments; values are what DVC compares
            write_params(base, override)
        categories = yaml.safe_load((base / "params.yaml").read_text())["data"]["categories"]
        if args.evaluate_only:
            results = evaluate_only(base, categories, args, subsets, commit)
            if args.out:
                print(f"wrote {args.out}")
            return
        seconds = run([str(BIN / "dvc"), "repro", *(f"preprocess@{c}" for c in categories)], base, "native")
        print(f"# fetch + preprocess: {seconds:.0f} s", flush=True)
        for kind in args.kinds:
            runs: dict[tuple[str, str], dict[str, Any]] = {}
            for spec in args.runs:
                isa, _, request = spec.partition("/")
                if isa not in ISAS or request not in ("amp", "fp32"):
                    raise SystemExit(f"--runs {spec!r}: expected <{'|'.join(ISAS)}>/<amp|fp32>")
                amp = request == "amp" and kind in GRADIENT_KINDS  # patchcore has no train.amp
                precision = precision_used(isa, amp)
                if (isa, precision) in runs:
                    continue  # amp on a CPU without a bfloat16 path is the float32 run again
                clone = Path(tmp) / f"{kind}-{isa}-{precision}"
                shutil.copytree(base, clone, symlinks=True)
                write_params(clone, {**KINDS[kind], "train": {"amp": amp}})
                # `report` needs train, thresholds and evaluate of every category, not export.
                seconds = run([str(BIN / "dvc"), "repro", "report"], clone, isa)
                row = {
                    "kind": kind,
                    "isa": isa,
                    "amp": amp,
                    "precision": precision,
                    "seconds": round(seconds),
                    "categories": collect(clone, categories, subsets),
                }
                shutil.rmtree(clone)
                reference = next(iter(runs.values()), row)
                same = runs.get(("native", precision))
                references = {"reference": reference, "native, same precision": same}
                row["against"] = {
                    name: compare(row["categories"], ref["categories"])
                    for name, ref in references.items()
                    if ref is not None and ref is not row
                }
                runs[isa, precision] = row
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "categories"}), flush=True)
                if args.out:  # after every run: a long bench that stops early keeps what it measured
                    write_results(Path(args.out), commit, args, results)
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
