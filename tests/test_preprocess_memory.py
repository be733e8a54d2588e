"""Preprocessing high-resolution categories (MVTec AD 2 is about 4 megapixels an image) in bounded memory.

Peak RSS of ``preprocess_category`` in a fresh process, for a category of 4-megapixel images
made here, must not grow with the number of images: each full-size image is decoded, resized
and dropped, and only model-size arrays are kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from conftest_data import square_mask, write_image

SIDE = 2048  # 4.2 megapixels
MB = 1 << 20

_MEASURE = """
import json, resource, sys
from anomaly_spotter.config import PreprocessConfig
from anomaly_spotter.dataset.preprocessing import preprocess_category
preprocess_category(sys.argv[1], sys.argv[2], PreprocessConfig(image_size=64))
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def make_large_category(root: Path, test_images: int) -> Path:
    """train 2 + validation 2 + ``test_images`` defective images (with masks), all SIDE x SIDE RGB."""
    ramp = np.linspace(40, 200, SIDE, dtype=np.float32)
    for i, split in enumerate(["train/good"] * 2 + ["validation/good"] * 2 + ["test/bad"] * test_images):
        image = np.stack([np.add.outer(ramp, ramp * (0.1 + 0.05 * i)) % 255] * 3, axis=-1).astype(
            np.uint8
        )  # compresses well
        name = f"{i:03d}.png"
        write_image(root / split / name, image)
        if split == "test/bad":
            mask = cv2.resize(square_mask(i % 5), (SIDE, SIDE), interpolation=cv2.INTER_NEAREST)
            write_image(root / "ground_truth" / "bad" / f"{i:03d}_mask.png", mask)
    return root


def peak_rss(raw: Path, out: Path) -> int:
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(raw), str(out)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    return int(json.loads(result.stdout.strip().splitlines()[-1]))


def test_peak_memory_does_not_grow_with_the_number_of_4_megapixel_images(tmp_path):
    few = peak_rss(make_large_category(tmp_path / "few", 4), tmp_path / "few_out")
    many = peak_rss(make_large_category(tmp_path / "many", 16), tmp_path / "many_out")
    full_image = SIDE * SIDE * 3
    print(f"peak RSS of preprocess: {few / MB:.0f} MiB with 4 test images, {many / MB:.0f} MiB with 16 (4.2 MP each)")
    # Twelve more images held at full size would add 12 x 12 MiB (plus their masks). Measured
    # on 2 cores: about 200 MiB whatever the count, with up to 20 MiB between identical runs
    # (allocator arenas of the decoding threads), so the bound is four images' worth.
    assert many - few < 4 * full_image, f"peak RSS grew by {(many - few) / MB:.0f} MiB for 12 more 4-megapixel images"
