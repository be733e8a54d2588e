"""How PatchCore's fit time grows with the training images: grouped greedy coreset vs the exact one.

The exact greedy k-center costs N x K distances with K = ratio x N, so its time grows with the
square of the training images; ``model.coreset_group_patches`` (the params default) picks
candidates per group of consecutive rows and then the bank among them (see
:mod:`anomaly_spotter.detectors.coreset`), which is linear. For 100 / 400 / 1600 training images
of the built-in generator (``weave``, rendered at ``data.synthetic.side`` and preprocessed to
patchcore's own input side, 320 px, as ``-S model.kind=patchcore`` fits them) this fits the
detector through the train stage's own function, grouped and (up to ``--exact-up-to`` images)
exact, and prints and writes ``bench/results/patchcore_fit_growth.json``:
``{"images": [...], "fit_seconds": [...], ...}`` with the extraction / coreset split, bank
sizes and exact coverage radii of both (the grouped fit's own, bounded check reports an upper
bound on the largest sets; its exact radius is then computed outside the timing), and the CPU.

Both fits of one size run back to back in one process: compare their times as ratios; another
CPU (or a busy one) gives other seconds.

Run: ``nice -n 10 python bench/patchcore_fit_growth.py [--sizes 100 400 1600] [--exact-up-to 400]``
(about 15 minutes on 2 cores; the exact greedy at 1600 images would add ~25).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from anomaly_spotter.config import KIND_IMAGE_SIZES, Params, PreprocessConfig, parse_params  # noqa: E402
from anomaly_spotter.dataset.preprocessing import preprocess_category  # noqa: E402
from anomaly_spotter.dataset.processed import ProcessedCategory, load_processed  # noqa: E402
from anomaly_spotter.detectors.coreset import greedy_coreset  # noqa: E402
from anomaly_spotter.detectors.patchcore import PatchCore  # noqa: E402
from anomaly_spotter.runtime import seed_everything  # noqa: E402
from anomaly_spotter.sources.synthetic import generate_category  # noqa: E402
from anomaly_spotter.training.memory_bank import fit_memory_bank  # noqa: E402
from anomaly_spotter.training.run import FitRun  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
OUT = REPO / "bench" / "results" / "patchcore_fit_growth.json"
SIZE = KIND_IMAGE_SIZES["patchcore"]  # what `-S model.kind=patchcore` preprocesses to
CATEGORY = "weave"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def training_images(count: int) -> ProcessedCategory:
    """``count`` + validation images of the built-in category, preprocessed at SIZE (made once, cached)."""
    folder = CACHE / f"growth_{CATEGORY}_{count}_{SIZE}px"
    if not (folder / "processed" / "index.json").is_file():
        defaults = parse_params({}).data.synthetic
        # val_fraction 0.15 holds some back: train on `count` images exactly.
        config = dataclasses.replace(defaults, train_good=round(count / 0.85) + 1, test_good=4, test_defect_per_type=2)
        generate_category(CATEGORY, folder / "raw", config)
        preprocess_category(folder / "raw", folder / "processed", PreprocessConfig(image_size=SIZE))
    data = load_processed(folder / "processed")
    return dataclasses.replace(data, train=data.train[:count])


def growth_params(group_patches: int, threads: int) -> Params:
    return parse_params(
        {
            "model": {"kind": "patchcore", "coreset_group_patches": group_patches},
            "preprocess": {"image_size": SIZE},
            "train": {"num_threads": threads, "device": "cpu"},
        }
    )


def exact_radius(data: ProcessedCategory, group_patches: int, threads: int) -> float:
    """The exact covering radius of the bank the fit keeps, where its own check stopped at a bound (untimed)."""
    params = growth_params(group_patches, threads)
    seed_everything(params.train.seed, params.train.num_threads)
    features = PatchCore.from_params(params).eval().extract(data.train, params.score.batch_size)
    coreset = greedy_coreset(
        features, params.model.coreset_ratio, params.train.seed, group_rows=group_patches, radius_rows=None
    )
    return coreset.radius


def fit(data: ProcessedCategory, group_patches: int, threads: int) -> dict[str, Any]:
    params = growth_params(group_patches, threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = FitRun(
            model_path=Path(tmp) / "model.pt",
            checkpoint_dir=Path(tmp) / "c",
            log_dir=Path(tmp) / "logs",
            progress=False,
        )
        return fit_memory_bank(PatchCore, data, params, run).details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 400, 1600], help="training images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--exact-up-to",
        type=int,
        default=400,
        help="also fit the exact greedy up to this many images (N^2: 1600 take ~25 min)",
    )
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    group = parse_params({}).model.coreset_group_patches
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {threads} threads; {CATEGORY} at {SIZE} px")
    print(
        f"{'images':>6} {'patches':>8} | grouped ({group}): {'groups':>6} {'bank':>6} {'fit s':>6} "
        f"{'coreset s':>9} {'radius':>7} | exact: {'bank':>6} {'fit s':>6} {'coreset s':>9} {'radius':>7}"
    )
    fit(training_images(min(args.sizes)), group, threads)  # warm-up: weights read, kernels chosen; not counted
    rows = []
    for count in args.sizes:
        data = training_images(count)
        grouped = fit(data, group, threads)
        # The fit's radius check is bounded (linear); where it stopped at an upper bound, the exact one
        # (N x K) is computed here, outside the timing, to compare with the exact greedy's.
        grouped["exact_coverage_radius"] = (
            grouped["coverage_radius"] if grouped["coverage_radius_exact"] else exact_radius(data, group, threads)
        )
        # One group is the exact greedy itself; --exact-up-to leaves the larger sizes' exact fit out.
        exact = (
            grouped if grouped["coreset_groups"] == 1 else fit(data, 0, threads) if count <= args.exact_up_to else None
        )
        rows.append({"images": count, "grouped": grouped, "exact": exact})
        exact_columns = (
            f"{exact['bank_size']:6d} {exact['fit_seconds']:6.1f} {exact['coreset_seconds']:9.1f} "
            f"{exact['coverage_radius']:7.3f}"
            if exact
            else "not run (--exact-up-to)"
        )
        print(
            f"{count:6d} {grouped['train_patches']:8d} | {'':>18}{grouped['coreset_groups']:6d} "
            f"{grouped['bank_size']:6d} {grouped['fit_seconds']:6.1f} {grouped['coreset_seconds']:9.1f} "
            f"{grouped['exact_coverage_radius']:7.3f} (fit: {'' if grouped['coverage_radius_exact'] else '<='}"
            f"{grouped['coverage_radius']:.3f}) | {'':>7}{exact_columns}",
            flush=True,
        )
    fit_seconds = [round(r["grouped"]["fit_seconds"], 2) for r in rows]
    exact_seconds = [round(r["exact"]["fit_seconds"], 2) if r["exact"] else None for r in rows]
    if len(rows) >= 2:
        exact_ratio = (
            f"{exact_seconds[-1] / exact_seconds[-2]:.2f}x" if exact_seconds[-1] and exact_seconds[-2] else "-"
        )
        print(
            f"\nlargest / second largest ({args.sizes[-1]} / {args.sizes[-2]} images): grouped "
            f"{fit_seconds[-1] / fit_seconds[-2]:.2f}x, exact {exact_ratio}"
        )
    keep = ("train_patches", "bank_size", "coreset_groups", "fit_seconds", "extract_seconds", "coreset_seconds")
    report = {
        "images": args.sizes,
        "fit_seconds": fit_seconds,
        "exact_greedy_fit_seconds": exact_seconds,
        "coreset_group_patches": group,
        "grouped": [
            {k: r["grouped"][k] for k in (*keep, "coverage_radius", "coverage_radius_exact", "exact_coverage_radius")}
            for r in rows
        ],
        "exact": [{k: r["exact"][k] for k in (*keep, "coverage_radius")} if r["exact"] else None for r in rows],
        "conditions": {
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "threads": threads,
            "data": f"built-in {CATEGORY} at {SIZE} px, patchcore defaults (params.yaml model section)",
            "note": "each size's fits ran back to back in one process after a warm-up fit; compare them as ratios",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
