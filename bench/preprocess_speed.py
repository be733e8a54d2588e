"""Preprocess throughput: decoding and resizing large PNGs (1024x1024), one thread vs both cores.

Writes N random-texture 1024x1024 RGB PNGs (like MVTec's carpet or grid) to a temporary
MVTec-layout folder and times ``preprocess_category`` on it with 1 and 2 decode threads.

Run: ``python bench/preprocess_speed.py [--images 60]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from anomaly_spotter.config import PreprocessConfig  # noqa: E402
from anomaly_spotter.dataset import preprocessing  # noqa: E402


def make_category(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train/good", "test/good"):
        (root / split).mkdir(parents=True)
    for i in range(count):
        noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        image = cv2.resize(noise, (1024, 1024), interpolation=cv2.INTER_CUBIC)  # compressible, like a photo
        split = "test/good" if i % 5 == 0 else "train/good"
        cv2.imwrite(str(root / split / f"{i:03d}.png"), image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        make_category(raw, args.images)
        megabytes = sum(p.stat().st_size for p in raw.rglob("*.png")) / 1e6
        print(f"{args.images} PNGs of 1024x1024 RGB, {megabytes:.0f} MB, {os.cpu_count()} cores")
        for threads in (1, 2):
            preprocessing.DECODE_THREADS = threads
            start = time.perf_counter()
            preprocessing.preprocess_category(raw, Path(tmp) / f"out{threads}", PreprocessConfig(image_size=128))
            seconds = time.perf_counter() - start
            print(f"decode threads {threads}: {seconds:6.2f} s  {args.images / seconds:6.1f} img/s")


if __name__ == "__main__":
    main()
