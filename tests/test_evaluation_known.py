"""Known answers through ``evaluate_category``: a detector whose anomaly map is the image itself.

The category is built by hand (no synthetic generator, no training): grey images whose
intensity *is* the anomaly map, so every metric follows from pixel counts. The images differ in
size and are not square, so a height/width swap, a mask at the wrong resolution or a map not
brought back to each image's own size changes an answer (or raises) instead of passing.

Model resolution S = 32. Test images, at their original (H, W), and their maps:

======  =======  ======  =============================================================
image   (H, W)   label   content (intensity = anomaly map)
======  =======  ======  =============================================================
wide    (32, 64) crack   left half 1, right half 0; mask = left half (cols 0-31)
tall    (64, 32) crack   top half 1, bottom half 0; mask = top half (rows 0-31)
good    (40, 24) good    uniform 0.8
hole    (32, 32) hole    uniform 0.2; mask = an 8x8 block (the defect is missed)
======  =======  ======  =============================================================

Upsampled 32 -> 64 (bilinear, pixel-centre aligned) a half/half step becomes 31 lines of 1,
one of 0.75, one of 0.25 and 31 of 0 (checked below), so at original resolution the 'wide'
image has 992 defect pixels at 1 and 32 at 0.75 and, outside the mask, 32 at 0.25 and 992 at 0;
'tall' the same along rows. The other levels sit between those (0.75 > 0.8 > 0.25 > 0.2), so
nearest-neighbour upsampling or no upsampling would change the answers as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from anomaly_spotter.config import ScoreConfig, parse_params
from anomaly_spotter.dataset.processed import load_processed, save_npy
from anomaly_spotter.detectors.anomaly_map import resize_to
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.evaluation.evaluate import evaluate_category
from anomaly_spotter.evaluation.thresholds import (
    ThresholdsMismatchError,
    parse_thresholds,
    score_record,
    threshold_report,
)
from anomaly_spotter.fileio import write_json
from conftest import validation_thresholds

S = 32
LEVEL_GOOD, LEVEL_HOLE = 204, 51  # 0.8 and 0.2 of 255
VAL_LEVELS = (200, 220)  # the two normal validation images: threshold ~0.86


class IntensityDetector(Detector):
    """The anomaly map is the pixel's grey level in [0, 1] (0 -> 0.0 and 255 -> 1.0 exactly); no smoothing."""

    kind = "intensity_known_answer"

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=1) + 1.0) * 0.5

    @classmethod
    def from_params(cls, params: Any) -> IntensityDetector:
        return cls(params.preprocess.image_size)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> IntensityDetector:
        return cls(arch["image_size"])

    def architecture(self) -> dict[str, Any]:
        return {"kind": self.kind, "image_size": self.image_size}

    @classmethod
    def fit(cls, data: Any, params: Any, run: Any) -> Any:
        raise NotImplementedError("nothing to fit")

    def map_kind(self, requested: str) -> str:
        return "intensity"

    def anomaly_maps(self, images: torch.Tensor, output: torch.Tensor, config: ScoreConfig) -> torch.Tensor:
        return output.float()


def grey(image: np.ndarray) -> np.ndarray:
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=-1)


def half(shape: tuple[int, int], axis: int) -> np.ndarray:
    """1 in the first half along ``axis`` (columns: 1, rows: 0), else 0."""
    out = np.zeros(shape, np.uint8)
    if axis == 1:
        out[:, : shape[1] // 2] = 1
    else:
        out[: shape[0] // 2] = 1
    return out


def build_category(root: Path) -> tuple[Path, Path]:
    """Raw (MVTec layout: images and 0/255 masks at original size) and processed folders, by hand."""
    raw, processed = root / "raw", root / "processed"
    hole_mask = np.zeros((32, 32), np.uint8)
    hole_mask[4:12, 20:28] = 1
    tests = [  # (file, label, defect type, original image, original mask or None, model image, model mask)
        (
            "test/crack/000.png",
            1,
            "crack",
            half((32, 64), 1) * 255,
            half((32, 64), 1),
            half((S, S), 1) * 255,
            half((S, S), 1),
        ),
        (
            "test/crack/001.png",
            1,
            "crack",
            half((64, 32), 0) * 255,
            half((64, 32), 0),
            half((S, S), 0) * 255,
            half((S, S), 0),
        ),
        (
            "test/good/000.png",
            0,
            "good",
            np.full((40, 24), LEVEL_GOOD),
            None,
            np.full((S, S), LEVEL_GOOD),
            np.zeros((S, S)),
        ),
        (
            "test/hole/000.png",
            1,
            "hole",
            np.full((32, 32), LEVEL_HOLE),
            hole_mask,
            np.full((S, S), LEVEL_HOLE),
            hole_mask,
        ),
    ]
    items = []
    for file, label, defect, image, mask, _, _ in tests:
        (raw / file).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(raw / file), grey(image))
        mask_file = None
        if mask is not None:
            mask_file = f"ground_truth/{defect}/{Path(file).stem}_mask.png"
            (raw / mask_file).parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(raw / mask_file), mask.astype(np.uint8) * 255)
        items.append(
            {
                "file": file,
                "label": label,
                "defect_type": defect,
                "mask": mask_file,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
    val = np.stack([grey(np.full((S, S), level)) for level in VAL_LEVELS])
    save_npy(processed / "train.npy", val)  # never read here
    save_npy(processed / "val.npy", val)
    save_npy(processed / "test.npy", np.stack([grey(t[5]) for t in tests]))
    save_npy(processed / "test_masks.npy", np.stack([t[6] for t in tests]).astype(np.uint8))
    write_json(
        processed / "index.json",
        {
            "image_size": S,
            "train": ["train/good/a.png", "train/good/b.png"],
            "val": ["train/good/a.png", "train/good/b.png"],
            "test": items,
        },
    )
    return raw, processed


def params_for(resolution: str) -> Any:
    return parse_params(
        {
            "preprocess": {"image_size": S},
            "score": {"image_score": "max", "smoothing_sigma": 0.0},
            "evaluate": {"resolution": resolution, "heatmap_examples": 1},
        }
    )


def evaluate(tmp_path: Path, resolution: str) -> dict[str, Any]:
    raw, processed = build_category(tmp_path)
    data = load_processed(processed)
    model, params = IntensityDetector(S), params_for(resolution)
    thresholds = validation_thresholds(model, data, params)
    return evaluate_category(
        data,
        raw,
        model,
        thresholds,
        params,
        category="known",
        metrics_path=tmp_path / "metrics.json",
        plots_dir=tmp_path / "plots",
        results_dir=tmp_path / "results",
    )


def mann_whitney(positives: dict[float, int], negatives: dict[float, int]) -> float:
    """AUROC from {score: pixel count} of defect and defect-free pixels, ties one half (by hand)."""
    wins = sum(
        cp * cn * (1.0 if p > n else 0.5 if p == n else 0.0)
        for p, cp in positives.items()
        for n, cn in negatives.items()
    )
    return wins / (sum(positives.values()) * sum(negatives.values()))


def test_the_half_step_upsamples_as_the_docstring_says() -> None:
    # The premise of the hand counts below (resize_to is what evaluate uses at original size).
    row = resize_to(half((S, S), 1).astype(np.float32), (32, 64))[0]
    assert row.tolist() == [1.0] * 31 + [0.75, 0.25] + [0.0] * 31
    col = resize_to(half((S, S), 0).astype(np.float32), (64, 32))[:, 0]
    assert col.tolist() == [1.0] * 31 + [0.75, 0.25] + [0.0] * 31


def test_known_answer_at_original_resolution_with_non_square_mixed_sizes(tmp_path) -> None:
    results = evaluate(tmp_path, "original")
    val = [level / 255 for level in VAL_LEVELS]
    threshold = float(np.percentile(val, 99))
    assert results["threshold"] == pytest.approx(threshold, abs=1e-6)

    # Image scores (max of the map): wide 1, tall 1, good 0.8, hole 0.2.
    assert results["image_auroc"] == pytest.approx(2 / 3)  # 0.8 beats only the hole's 0.2
    assert results["per_defect_image_auroc"] == {"crack": 1.0, "hole": 0.0}
    # At the ~0.86 validation threshold: wide and tall flagged, the hole missed, the good image passes.
    assert (results["tp"], results["fp"], results["tn"], results["fn"]) == (2, 0, 1, 1)
    assert (results["accuracy"], results["precision"], results["recall"]) == (0.75, 1.0, pytest.approx(2 / 3))
    assert results["f1"] == pytest.approx(0.8)
    assert results["f1_max_oracle"] == pytest.approx(6 / 7)  # all four flagged at 0.2: 2*3 / (4 + 3)

    # Pixels at original size: wide + tall give 2 x (992 at 1, 32 at 0.75) defect and 2 x (32 at 0.25,
    # 992 at 0) defect-free; good 40*24 = 960 defect-free at 0.8; hole 64 defect + 960 defect-free at 0.2.
    defect = {1.0: 1984, 0.75: 64, 0.2: 64}
    normal = {0.25: 64, 0.0: 1984, 0.8: 960, 0.2: 960}
    assert results["pixel_auroc"] == pytest.approx(mann_whitney(defect, normal), abs=1e-9)
    # 1 beats all 3968; 0.75 beats 64 + 1984 + 960; 0.2 beats 1984 and ties 960 (one half each).
    assert results["pixel_auroc"] == pytest.approx(
        (1984 * 3968 + 64 * 3008 + 64 * (1984 + 480)) / (2112 * 3968), abs=1e-9
    )

    # AU-PRO up to FPR 0.3, three regions (wide's, tall's, hole's), N = 3968 defect-free pixels:
    #   t = 1    -> FPR 0,              PRO p1 = (992/1024 * 2 + 0) / 3
    #   t = 0.8  -> FPR fa = 960/N,     PRO p1
    #   t = 0.75 -> FPR fa,             PRO 2/3
    #   t = 0.25 -> FPR fb = 1024/N,    PRO 2/3
    #   t = 0.2  -> FPR fc = 1984/N,    PRO 1 (a tied step, interpolated at 0.3)
    p1, fa, fb, fc = 2 * 992 / 1024 / 3, 960 / 3968, 1024 / 3968, 1984 / 3968
    pro_at_limit = 2 / 3 + (1 / 3) * (0.3 - fb) / (fc - fb)
    expected = (p1 * fa + 2 / 3 * (fb - fa) + 0.5 * (2 / 3 + pro_at_limit) * (0.3 - fb)) / 0.3
    assert results["au_pro"] == pytest.approx(expected, abs=1e-9)
    assert json.loads((tmp_path / "metrics.json").read_text())["au_pro"] == pytest.approx(expected, abs=1e-6)


def test_known_answer_at_model_resolution(tmp_path) -> None:
    results = evaluate(tmp_path, "model")
    # 32 x 32 maps and the processed masks: wide and tall have 512 defect pixels at 1 and 512
    # defect-free at 0 each; good 1024 defect-free at 0.8; hole 64 defect + 960 defect-free at 0.2.
    defect = {1.0: 1024, 0.2: 64}
    normal = {0.0: 1024, 0.8: 1024, 0.2: 960}
    assert results["pixel_auroc"] == pytest.approx(mann_whitney(defect, normal), abs=1e-9)
    assert results["pixel_auroc"] == pytest.approx((1024 * 3008 + 64 * (1024 + 480)) / (1088 * 3008), abs=1e-9)
    # PRO is 2/3 from FPR 0 until the good image's 0.8 (FPR 1024/3008 > 0.3): flat at 2/3.
    assert results["au_pro"] == pytest.approx(2 / 3, abs=1e-9)
    assert results["image_auroc"] == pytest.approx(2 / 3)  # image scores do not depend on the resolution


def test_evaluate_refuses_thresholds_made_with_other_score_params(tmp_path) -> None:
    raw, processed = build_category(tmp_path)
    data = load_processed(processed)
    model, params = IntensityDetector(S), params_for("original")
    other = ScoreConfig(image_score="topk_mean", smoothing_sigma=0.0)
    report = threshold_report([0.78, 0.86], params.thresholds, score_record(other, model))
    stale = parse_thresholds(report, "models/known/thresholds.json")
    with pytest.raises(ThresholdsMismatchError) as info:
        evaluate_category(
            data,
            raw,
            model,
            stale,
            params,
            category="known",
            metrics_path=tmp_path / "metrics.json",
            plots_dir=tmp_path / "plots",
            results_dir=tmp_path / "results",
        )
    message = str(info.value)
    assert (
        "models/known/thresholds.json" in message
        and "image_score is 'topk_mean'" in message
        and "but 'max' now" in message
    )
    assert "dvc repro thresholds@known" in message
    assert not (tmp_path / "metrics.json").exists()  # refused before writing anything
