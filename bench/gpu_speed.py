"""CUDA training throughput, float32 against automatic mixed precision (AMP).

For the lent GPU machine: the same bare training step as ``bench/train_speed.py`` (model,
combined loss, optimizer) on random 128 px images, once in float32 and once under
``torch.autocast`` (bf16 where the GPU supports it, else fp16 with a GradScaler), with
pinned host memory and non-blocking copies as the trainer uses them.

Run: ``bash bench/gpu.sh`` (or ``python bench/gpu_speed.py --batch-size 64``)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from anomaly_spotter.config import parse_params  # noqa: E402
from anomaly_spotter.detectors import build_detector, detector_class  # noqa: E402
from anomaly_spotter.training.optim import make_optimizer  # noqa: E402


def rate(amp: bool, batch_size: int, steps: int) -> float:
    params = parse_params({})  # the defaults: params.yaml's model
    device = torch.device("cuda")
    model = build_detector(params).to(device)
    loss_fn = detector_class(params.model.kind).training_loss(params).to(device)
    optimizer = make_optimizer(model, params.train)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    host = (torch.rand(batch_size, 3, 128, 128) * 2 - 1).pin_memory()
    mask = (torch.rand(batch_size, 1, 128, 128, device=device) > 0.9).float()
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        x = host.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            output = model(x)
        loss, _ = loss_fn(output, x, mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on the GPU machine")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch_size}")
    fp32 = rate(False, args.batch_size, args.steps)
    amp = rate(True, args.batch_size, args.steps)
    print(f"float32: {fp32:8.1f} img/s")
    print(f"AMP ({'bf16' if torch.cuda.is_bf16_supported() else 'fp16'}): {amp:8.1f} img/s  ({amp / fp32:.2f}x)")


if __name__ == "__main__":
    main()
