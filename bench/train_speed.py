"""Training throughput: the real loop against a bare step, and achieved GFLOP/s against matmul.

Prints, on the synthetic ``weave`` category at the params' image size:

* images/s of the real training loop (dataset, augmentation, combined loss, logging);
* images/s of a bare forward + backward + optimizer step on random tensors, same model and
  batch size, same process; and their ratio (target >= 0.9);
* the model's FLOPs per image (``torch.utils.flop_counter``), the achieved GFLOP/s, and a
  large float32 matmul's GFLOP/s measured in the same run as this machine's practical peak;
* the same bare step in ``channels_last`` and in the default memory format.

Run: ``python bench/train_speed.py [--epochs 2] [--batch-size 8]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from anomaly_spotter.config import load_params  # noqa: E402
from anomaly_spotter.losses import CombinedLoss  # noqa: E402
from anomaly_spotter.preprocessing import load_processed, preprocess_category  # noqa: E402
from anomaly_spotter.synthetic import generate_category  # noqa: E402
from anomaly_spotter.training import Trainer, build_model, make_optimizer, seed_everything  # noqa: E402


def bare_step_rate(params, batch_size: int, steps: int, channels_last: bool) -> float:
    seed_everything(0, params.train.num_threads)
    model = build_model(params)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = CombinedLoss(params.loss)
    optimizer = make_optimizer(model, params.train)
    size = params.preprocess.image_size
    x = (torch.rand(batch_size, 3, size, size) * 2 - 1).contiguous(memory_format=fmt)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()  # two warm-up steps
        loss, _ = loss_fn(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def flops_per_image(params) -> float:
    model = build_model(params)
    size = params.preprocess.image_size
    x = torch.rand(2, 3, size, size) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        model(x).square().mean().backward()
    return counter.get_total_flops() / 2


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    batch = args.batch_size or params.train.batch_size
    import dataclasses

    params = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=args.epochs, batch_size=batch, sample_every=0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_category("weave", tmp / "raw", params.data.synthetic)
        preprocess_category(tmp / "raw", tmp / "processed", params.preprocess)
        data = load_processed(tmp / "processed")
        trainer = Trainer(params, data, checkpoint_dir=tmp / "ck", log_dir=tmp / "logs", progress=False)
        trainer.train_epoch(0)  # warm-up epoch (first-call allocations)
        start = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            trainer.train_epoch(epoch)
        loop_rate = args.epochs * len(data.train) / (time.perf_counter() - start)
    steps = max(4, len(data.train) // batch)
    bare_cl = bare_step_rate(params, batch, steps, channels_last=True)
    bare_default = bare_step_rate(params, batch, steps, channels_last=False)
    flops = flops_per_image(params)
    peak = matmul_gflops()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"batch size {batch}, image {params.preprocess.image_size}px, {len(data.train)} training images")
    print(f"real training loop:            {loop_rate:7.2f} img/s")
    print(f"bare step (channels_last):     {bare_cl:7.2f} img/s   loop/bare = {loop_rate / bare_cl:.3f}")
    print(f"bare step (contiguous):        {bare_default:7.2f} img/s")
    print(f"model FLOPs per image (fwd+bwd): {flops / 1e9:.2f} GFLOP")
    print(f"achieved: {loop_rate * flops / 1e9:.1f} GFLOP/s = {loop_rate * flops / 1e9 / peak:.1%} of float32 matmul ({peak:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
