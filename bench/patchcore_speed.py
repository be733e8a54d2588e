"""PatchCore speed on this machine: fit time, its coreset share, and scoring throughput.

Prints (no asserts), with the CPU model and torch's thread count:

* for efficientnet_lite0 and efficientnet_lite2 at 256 px: the whole ``PatchCore.fit`` (features,
  greedy coreset, exact coverage radius, ``model.pt``, validation scores, DVCLive) on every
  training image, split into feature extraction and coreset; then scoring throughput in
  images/s (forward + anomaly maps + image scores, ``score.batch_size`` 32, and batch 1);
* how lite0's fit time grows with the number of training images (100 / 200 / 400), with the
  greedy coreset's share, and what the textbook greedy loop (one pass over all patches per
  centre) would have cost at the largest size, extrapolated from its first 50 centres.

Data: ``../shared/datasets/magnetic_tile`` preprocessed at 256 px into ``.cache/bench`` when
present (as ``bench/patchcore_tuning.py`` does), else synthetic striped textures. On a shared
machine the figures are approximate.

Run: ``nice -n 10 python bench/patchcore_speed.py [--threads 2] [--sizes 100 200 400]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from anomaly_spotter.config import PreprocessConfig, ScoreConfig, parse_params  # noqa: E402
from anomaly_spotter.dataset.preprocessing import preprocess_category  # noqa: E402
from anomaly_spotter.dataset.processed import ProcessedCategory, load_processed, save_npy  # noqa: E402
from anomaly_spotter.detectors.coreset import coreset_size, sparse_projection  # noqa: E402
from anomaly_spotter.detectors.patchcore import PatchCore  # noqa: E402
from anomaly_spotter.tensors import to_tensor  # noqa: E402
from anomaly_spotter.training.memory_bank import fit_memory_bank  # noqa: E402
from anomaly_spotter.training.run import FitRun  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "datasets" / "magnetic_tile" / "magnetic_tile"
SIZE = 256
TEXTBOOK_STEPS = 50  # centres of the textbook loop actually run; the rest is extrapolated


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def synthetic_category(folder: Path, train: int, test: int) -> ProcessedCategory:
    """Striped textures with noise, written in the processed format (when the real data is absent)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE]

    def images(count: int) -> np.ndarray:
        out = np.empty((count, SIZE, SIZE, 3), np.uint8)
        for i in range(count):
            base = 128 + 60 * np.sin(2 * np.pi * (x + 0.3 * y) / rng.uniform(12, 18) + rng.uniform(0, 6.3))
            out[i] = np.clip(base[..., None] + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255)
        return out

    folder.mkdir(parents=True, exist_ok=True)
    save_npy(folder / "train.npy", images(train))
    save_npy(folder / "val.npy", images(16))
    save_npy(folder / "test.npy", images(test))
    save_npy(folder / "test_masks.npy", np.zeros((test, SIZE, SIZE), np.uint8))
    items = [
        {"file": f"test/good/{i}.png", "label": 0, "defect_type": "good", "mask": None, "height": SIZE, "width": SIZE}
        for i in range(test)
    ]
    index = {
        "image_size": SIZE,
        "train": [f"train/good/{i}.png" for i in range(train)],
        "val": [f"v{i}" for i in range(16)],
        "test": items,
    }
    (folder / "index.json").write_text(json.dumps(index))
    return load_processed(folder)


def dataset(max_train: int) -> tuple[ProcessedCategory, str]:
    if RAW.is_dir():
        folder = REPO / ".cache" / "bench" / f"magnetic_tile_{SIZE}"
        if not (folder / "index.json").is_file():
            preprocess_category(RAW, folder, PreprocessConfig(image_size=SIZE))
        return load_processed(folder), "magnetic_tile (real)"
    folder = REPO / ".cache" / "bench" / f"synthetic_textures_{SIZE}"
    if (folder / "index.json").is_file():
        return load_processed(folder), "synthetic textures"
    return synthetic_category(folder, max_train, 128), "synthetic textures"


def fit(data: ProcessedCategory, backbone: str, threads: int) -> dict:
    params = parse_params(
        {
            "model": {"kind": "patchcore", "backbone": backbone},
            "preprocess": {"image_size": SIZE},
            "train": {"num_threads": threads, "device": "cpu"},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = FitRun(
            model_path=Path(tmp) / "model.pt",
            checkpoint_dir=Path(tmp) / "c",
            log_dir=Path(tmp) / "logs",
            progress=False,
        )
        result = fit_memory_bank(PatchCore, data, params, run)
        payload = torch.load(run.model_path, weights_only=True)
    detector = PatchCore.from_architecture(payload["architecture"])
    detector.load_state_dict(payload["state_dict"])
    return {"details": result.details, "detector": detector.eval(), "params": params}


@torch.inference_mode()
def throughput(detector: PatchCore, images: np.ndarray, batch_size: int, config: ScoreConfig) -> float:
    """images/s of forward + maps + scores (one warm-up batch not counted)."""
    x = to_tensor(np.asarray(images[:batch_size]))
    output = detector(x)
    detector.image_scores(detector.anomaly_maps(x, output, config), output, config)
    started = time.perf_counter()
    count = 0
    for lo in range(0, len(images), batch_size):
        x = to_tensor(np.asarray(images[lo : lo + batch_size]))
        output = detector(x)
        detector.image_scores(detector.anomaly_maps(x, output, config), output, config)
        count += len(x)
    return count / (time.perf_counter() - started)


@torch.inference_mode()
def textbook_greedy_seconds(detector: PatchCore, images: np.ndarray, ratio: float) -> tuple[float, int]:
    """Extrapolated seconds of the one-pass-per-centre greedy loop on these images' patches."""
    features = detector.extract(images, 32)
    generator = torch.Generator().manual_seed(0)
    z = features @ sparse_projection(features.shape[1], 128, generator) if features.shape[1] > 128 else features
    squared = z.square().sum(1)
    distance = torch.full((len(z),), math.inf)
    centre = 0
    started = time.perf_counter()
    for _ in range(TEXTBOOK_STEPS):
        step = torch.addmv(squared, z, z[centre], alpha=-2.0).add_(squared[centre])
        torch.minimum(distance, step, out=distance)
        centre = int(distance.argmax())
    per_centre = (time.perf_counter() - started) / TEXTBOOK_STEPS
    k = coreset_size(len(z), ratio)
    return per_centre * k, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[100, 200, 400], help="training images for the growth table"
    )
    parser.add_argument("--backbones", nargs="*", default=["efficientnet_lite0", "efficientnet_lite2"])
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    data, source = dataset(max(args.sizes + [400]))
    print(
        f"CPU: {cpu_model()}; torch {torch.__version__}, {threads} threads; data: {source}, {SIZE} px, "
        f"{len(data.train)} train images"
    )
    print("(figures measured on a shared 2-core machine are approximate)\n")

    print(
        f"{'backbone':20} {'train':>5} {'patches':>8} {'bank':>5} {'fit s':>6} {'features s':>10} "
        f"{'coreset s':>9} {'img/s b32':>9} {'img/s b1':>8}"
    )
    score = ScoreConfig()
    test = data.test[:128]
    for backbone in args.backbones:
        result = fit(data, backbone, threads)
        d = result["details"]
        rate32 = throughput(result["detector"], test, 32, score)
        rate1 = throughput(result["detector"], test[:16], 1, score)
        print(
            f"{backbone:20} {len(data.train):5d} {d['train_patches']:8d} {d['bank_size']:5d} {d['fit_seconds']:6.1f} "
            f"{d['extract_seconds']:10.1f} {d['coreset_seconds']:9.1f} {rate32:9.1f} {rate1:8.1f}",
            flush=True,
        )

    print(f"\nfit time vs training images (efficientnet_lite0, coreset_ratio {result['params'].model.coreset_ratio}):")
    print(
        f"{'train':>5} {'patches':>8} {'bank':>5} {'fit s':>6} {'features s':>10} "
        f"{'coreset s':>9} {'coreset share':>13}"
    )
    last = None
    for count in args.sizes:
        subset = dataclasses.replace(data, train=data.train[:count])
        last = fit(subset, "efficientnet_lite0", threads)
        d = last["details"]
        print(
            f"{min(count, len(data.train)):5d} {d['train_patches']:8d} {d['bank_size']:5d} {d['fit_seconds']:6.1f} "
            f"{d['extract_seconds']:10.1f} {d['coreset_seconds']:9.1f} {d['coreset_seconds'] / d['fit_seconds']:12.0%}",
            flush=True,
        )
    if last is not None:
        count = args.sizes[-1]
        seconds, k = textbook_greedy_seconds(last["detector"], data.train[:count], last["params"].model.coreset_ratio)
        print(
            f"\ntextbook greedy (one pass over all patches per centre) at {count} images: "
            f"~{seconds:.0f} s for {k} centres "
            f"(extrapolated from {TEXTBOOK_STEPS}), vs {last['details']['coreset_seconds']:.1f} s batched "
            "(incl. exact radius)"
        )


if __name__ == "__main__":
    main()
