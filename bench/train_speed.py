"""Training throughput: the real loop against a bare step, and achieved GFLOP/s against matmul.

Prints, on the synthetic ``weave`` category at the params' image size:

* images/s of the real training loop (dataset, augmentation, combined loss, logging);
* images/s of a bare forward + losses + backward + optimizer step on random tensors, same model,
  batch size and precision (``train.amp``: bfloat16 on CPUs with native support), same
  process; and their ratio (target >= 0.9);
* the model's FLOPs per image (``torch.utils.flop_counter``), the achieved GFLOP/s, and a
  large float32 matmul's GFLOP/s measured in the same run as this machine's practical peak;
* the same bare step in float32 (no mixed precision) and in the default memory format.

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
from anomaly_spotter.dataset.preprocessing import preprocess_category  # noqa: E402
from anomaly_spotter.dataset.processed import load_processed  # noqa: E402
from anomaly_spotter.detectors import build_detector, detector_class  # noqa: E402
from anomaly_spotter.runtime import autocast_dtype, seed_everything  # noqa: E402
from anomaly_spotter.sources.synthetic import generate_category  # noqa: E402
from anomaly_spotter.training.loop import Trainer  # noqa: E402
from anomaly_spotter.training.optim import make_optimizer  # noqa: E402


def bare_step_rate(params, batch_size: int, steps: int, channels_last: bool, amp_dtype: torch.dtype | None) -> float:
    """img/s of forward + losses + backward + Adam step on random tensors (no data pipeline)."""
    seed_everything(0, params.train.num_threads)
    model = build_detector(params)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = detector_class(params.model.kind).training_loss(params)
    optimizer = make_optimizer(model, params.train)
    size = params.preprocess.image_size
    x = (torch.rand(batch_size, 3, size, size) * 2 - 1).contiguous(memory_format=fmt)  # (B, 3, S, S)
    mask = (torch.rand(batch_size, 1, size, size) > 0.9).float()  # (B, 1, S, S)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()  # two warm-up steps
        with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            output = model(x)
        loss, _ = loss_fn(output, x, mask)  # losses in float32, as the trainer does
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def flops_per_image(params) -> float:
    model = build_detector(params)
    size = params.preprocess.image_size
    x = torch.rand(2, 3, size, size) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        output = model(x)
        sum(t.square().mean() for t in (output if isinstance(output, tuple) else (output,))).backward()
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

    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, epochs=args.epochs, batch_size=batch, sample_every=0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_category("weave", tmp / "raw", params.data.synthetic)
        preprocess_category(tmp / "raw", tmp / "processed", params.preprocess)
        data = load_processed(tmp / "processed")
        trainer = Trainer(
            detector_class(params.model.kind),
            params,
            data,
            checkpoint_dir=tmp / "ck",
            log_dir=tmp / "logs",
            progress=False,
        )
        trainer.train_epoch(0)  # warm-up epoch (first-call allocations)
        start = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            trainer.train_epoch(epoch)
        loop_rate = args.epochs * len(data.train) / (time.perf_counter() - start)
    steps = max(4, len(data.train) // batch)
    amp = autocast_dtype(torch.device("cpu")) if params.train.amp else None
    bare = bare_step_rate(params, batch, steps, channels_last=True, amp_dtype=amp)
    bare_fp32 = bare_step_rate(params, batch, steps, channels_last=True, amp_dtype=None)
    bare_default = bare_step_rate(params, batch, steps, channels_last=False, amp_dtype=None)
    flops = flops_per_image(params)
    peak = matmul_gflops()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"batch size {batch}, image {params.preprocess.image_size}px, {len(data.train)} training images")
    print(f"model: {params.model.kind}, mixed precision: {amp or 'off (float32)'}")
    print(f"real training loop:                     {loop_rate:7.2f} img/s")
    print(f"bare step (channels_last, as training): {bare:7.2f} img/s   loop/bare = {loop_rate / bare:.3f}")
    print(f"bare step (channels_last, float32):     {bare_fp32:7.2f} img/s")
    print(f"bare step (contiguous, float32):        {bare_default:7.2f} img/s")
    print(f"model FLOPs per image (fwd+bwd): {flops / 1e9:.2f} GFLOP")
    print(
        f"achieved: {loop_rate * flops / 1e9:.1f} GFLOP/s = {loop_rate * flops / 1e9 / peak:.1%} of float32 matmul "
        f"({peak:.1f} GFLOP/s)"
    )
    print(
        f"float32 bare step achieves {bare_fp32 * flops / 1e9:.1f} GFLOP/s = {bare_fp32 * flops / 1e9 / peak:.1%} of it"
    )


if __name__ == "__main__":
    main()
