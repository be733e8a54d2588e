"""Mistakes at the threshold, per-defect-type results and the fixed selection, with known answers.

The detector is the intensity detector of ``test_evaluation_known.py`` (the anomaly map is the
image's grey level, the image score its maximum), so every score is set by hand. Model
resolution S = 32, pixel metrics at model resolution. Validation images at grey levels 200 and
220 give the percentile_99 threshold 0.8616 (and fpr_1 just above 220/255 = 0.8627).

=========  =======  ======================================  =====  =======
file       label    content                                 score  verdict
=========  =======  ======================================  =====  =======
good/000   good     uniform 100                             0.392  TN
good/001   good     uniform 230                             0.902  FP #2
good/002   good     uniform 240                             0.941  FP #1
crack/000  crack    left half 255, mask = left half         1.0    TP
crack/001  crack    uniform 120, mask = a block             0.471  FN #2
hole/000   hole     uniform 60, mask = a block              0.235  FN #1
hole/001   hole     uniform 250, mask = a block             0.980  TP
=========  =======  ======================================  =====  =======

So recall is 1/2 for crack and for hole (the weakest by name: crack), the false-alarm rate 2/3,
and the region PRO at the threshold 1/2 for both types (one region fully above, one not at all).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from anomaly_spotter.config import parse_params
from anomaly_spotter.dataset.layout import find_problems
from anomaly_spotter.dataset.preprocessing import preprocess_category
from anomaly_spotter.dataset.processed import load_processed, save_npy
from anomaly_spotter.errors import ConfigError
from anomaly_spotter.evaluation import gallery
from anomaly_spotter.evaluation.evaluate import evaluate_category
from anomaly_spotter.evaluation.mistakes import comparison_selection, mistakes, per_defect_results
from anomaly_spotter.evaluation.report import write_report
from anomaly_spotter.fileio import write_json
from conftest import validation_thresholds
from test_evaluation_known import IntensityDetector, grey, half

S = 32
BLOCK = np.zeros((S, S), np.uint8)
BLOCK[8:16, 8:16] = 1
ROW = gallery.CAPTION + gallery.PANEL + gallery.GAP  # one drawn case, px
CASES = (  # file, label, defect type, model image (grey levels), mask
    ("test/crack/000.png", 1, "crack", half((S, S), 1) * 255, half((S, S), 1)),
    ("test/crack/001.png", 1, "crack", np.full((S, S), 120), BLOCK),
    ("test/good/000.png", 0, "good", np.full((S, S), 100), None),
    ("test/good/001.png", 0, "good", np.full((S, S), 230), None),
    ("test/good/002.png", 0, "good", np.full((S, S), 240), None),
    ("test/hole/000.png", 1, "hole", np.full((S, S), 60), BLOCK),
    ("test/hole/001.png", 1, "hole", np.full((S, S), 250), BLOCK),
)


def build(root: Path, masks: str = "pixel") -> Path:
    """The processed folder of the table above (masks "none": no mask files, all-zero masks)."""
    items = []
    for file, label, defect, _, mask in CASES:
        has_mask = mask is not None and masks == "pixel"
        mask_file = f"ground_truth/{defect}/{Path(file).stem}_mask.png" if has_mask else None
        items.append({"file": file, "label": label, "defect_type": defect, "mask": mask_file, "height": S, "width": S})
    val = np.stack([grey(np.full((S, S), level)) for level in (200, 220)])
    save_npy(root / "train.npy", val)
    save_npy(root / "val.npy", val)
    save_npy(root / "test.npy", np.stack([grey(c[3]) for c in CASES]))
    zeros = np.zeros((S, S), np.uint8)
    masks_array = [(c[4] if c[4] is not None and masks == "pixel" else zeros) for c in CASES]
    save_npy(root / "test_masks.npy", np.stack(masks_array).astype(np.uint8))
    index = {"image_size": S, "train": ["a", "b"], "val": ["a", "b"], "test": items, "masks": masks}
    write_json(root / "index.json", index)
    return root


def evaluate(tmp_path: Path, masks: str = "pixel", **evaluate_params: Any) -> dict[str, Any]:
    data = load_processed(build(tmp_path / "processed", masks))
    params = parse_params(
        {
            "preprocess": {"image_size": S},
            "score": {"image_score": "max", "smoothing_sigma": 0.0},
            "thresholds": {"strategy": evaluate_params.pop("strategy", "percentile_99")},
            "evaluate": {"resolution": "model", "heatmap_examples": 1, **evaluate_params},
        }
    )
    model = IntensityDetector(S)
    return evaluate_category(
        data,
        tmp_path / "raw",
        model,
        validation_thresholds(model, data, params),
        params,
        category="known",
        metrics_path=tmp_path / "known.json",
        plots_dir=tmp_path / "plots",
        results_dir=tmp_path / "results",
    )


def test_known_mistakes_in_the_gallery_worst_first(tmp_path: Path) -> None:
    results = evaluate(tmp_path)
    assert (results["tp"], results["fp"], results["tn"], results["fn"]) == (2, 2, 1, 2)
    with open(tmp_path / "results" / "mistakes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["kind"], r["rank"], r["file"]) for r in rows] == [
        ("fn", "1", "test/hole/000.png"),
        ("fn", "2", "test/crack/001.png"),
        ("fp", "1", "test/good/002.png"),
        ("fp", "2", "test/good/001.png"),
    ]
    for row in rows:  # one drawn PNG per mistake, captioned by file and score
        image = cv2.imread(str(tmp_path / "results" / row["image"]))
        assert image is not None and image.shape[1] == 3 * gallery.PANEL + 4 * gallery.GAP
    page = cv2.imread(str(tmp_path / "plots" / "mistakes.png"))
    rows_drawn = (page.shape[0] - gallery.GAP - gallery.header_height(2)) // ROW
    assert rows_drawn == 4


def test_gallery_size_caps_each_kind_on_the_page_but_every_mistake_is_kept(tmp_path: Path) -> None:
    evaluate(tmp_path, gallery_size=1)
    page = cv2.imread(str(tmp_path / "plots" / "mistakes.png"))
    rows_drawn = (page.shape[0] - gallery.GAP - gallery.header_height(2)) // ROW
    assert rows_drawn == 2  # the worst miss and the worst false alarm
    assert len(list((tmp_path / "results" / "mistakes").glob("*.png"))) == 4


def test_per_type_recall_and_pro_against_the_hand_count(tmp_path: Path) -> None:
    results = evaluate(tmp_path)
    assert results["per_defect_recall"] == {"crack": 0.5, "hole": 0.5}
    assert results["per_defect_pro_at_threshold"] == {"crack": 0.5, "hole": 0.5}
    assert results["per_defect_images"] == {"crack": 2, "hole": 2} and results["good_images"] == 3
    assert results["false_alarm_rate"] == pytest.approx(2 / 3)
    assert results["weakest_defect_type"] == "crack"
    # The same counts from scores.csv, by hand.
    with open(tmp_path / "results" / "scores.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    for name in ("crack", "hole"):
        of_type = [r for r in table if r["defect_type"] == name]
        assert results["per_defect_recall"][name] == sum(int(r["predicted_anomalous"]) for r in of_type) / len(of_type)
    bars = json.loads((tmp_path / "plots" / "defect_types.json").read_text())["defect_types"]
    assert {(b["defect_type"], b["measure"]): b["value"] for b in bars} == pytest.approx(
        {
            ("crack", "recall"): 0.5,
            ("crack", "region PRO"): 0.5,
            ("hole", "recall"): 0.5,
            ("hole", "region PRO"): 0.5,
            ("good", "false-alarm rate"): 2 / 3,
        }
    )
    # summary.md names the weakest type.
    write_report(["known"], tmp_path, tmp_path / "summary.json", tmp_path / "summary.md")
    assert "| known | crack | 50.0% | crack 50.0%, hole 50.0% | 66.7% |" in (tmp_path / "summary.md").read_text()


def test_fpr_strategy_reports_the_measured_rate_beside_its_target(tmp_path: Path) -> None:
    results = evaluate(tmp_path, strategy="fpr_1")
    assert results["threshold"] > 220 / 255  # no validation image may be flagged (floor(0.02) = 0)
    assert results["false_alarm_rate_target"] == 0.01 and results["false_alarm_rate_validation"] == 0.0
    assert results["false_alarm_rate"] == pytest.approx(2 / 3)  # both bright good test images still pass it


def test_selection_is_seeded_by_the_files_alone_and_drawn_the_same_every_run(tmp_path: Path) -> None:
    types = [c[2] for c in CASES]
    files = [c[0] for c in CASES]
    picked = comparison_selection(types, files, 1, seed=0)
    assert [types[i] for i in picked] == ["good", "crack", "hole"]
    assert picked == comparison_selection(types, files, 1, seed=0)
    assert len({tuple(comparison_selection(types, files, 1, seed=s)) for s in range(8)}) > 1  # the seed matters
    evaluate(tmp_path / "a", compare_per_type=1)
    evaluate(tmp_path / "b", compare_per_type=1)
    assert (tmp_path / "a/plots/selection.png").read_bytes() == (tmp_path / "b/plots/selection.png").read_bytes()
    assert (tmp_path / "a/plots/mistakes.png").read_bytes() == (tmp_path / "b/plots/mistakes.png").read_bytes()


def test_mistake_order_breaks_ties_by_test_order() -> None:
    fn, fp = mistakes(np.array([1, 1, 0, 0, 1]), np.array([0.2, 0.2, 0.7, 0.7, 0.1]), 0.5)
    assert (fn, fp) == ([4, 0, 1], [2, 3])
    none_flagged = per_defect_results(np.array([0, 1]), ["good", "a"], np.array([0.1, 0.1]), 0.5)
    assert none_flagged["per_defect_recall"] == {"a": 0.0}


# --------------------------------------------------------------------------- image labels only


def test_image_labels_only_skip_pixel_metrics_and_keep_the_image_auroc(tmp_path: Path) -> None:
    with_masks = evaluate(tmp_path / "pixel")
    labels_only = evaluate(tmp_path / "none", masks="none")
    assert labels_only["image_auroc"] == with_masks["image_auroc"]
    assert labels_only["per_defect_recall"] == with_masks["per_defect_recall"]
    assert "pixel_auroc" not in labels_only and "au_pro" not in labels_only
    assert "per_defect_pro_at_threshold" not in labels_only
    assert labels_only["pixel_metrics"].startswith("skipped: data.masks is none")
    pro = json.loads((tmp_path / "none/plots/pro.json").read_text())["pro"]
    assert len(pro) == 1 and pro[0]["au_pro"] is None and "data.masks is none" in pro[0]["note"]
    bars = json.loads((tmp_path / "none/plots/defect_types.json").read_text())["defect_types"]
    assert all("data.masks is none" in b["note"] for b in bars)
    assert len(list((tmp_path / "none/results/mistakes").glob("*.png"))) == 4
    write_report(["known"], tmp_path / "none", tmp_path / "summary.json", tmp_path / "summary.md")
    assert "- known: pixel metrics skipped: data.masks is none" in (tmp_path / "summary.md").read_text()


def _raw_category(root: Path) -> Path:
    """A tiny raw category in MVTec layout with masks for both defect images."""
    levels = {
        "train/good/000.png": 90,
        "train/good/001.png": 95,
        "train/good/002.png": 100,
        "test/good/000.png": 90,
        "test/crack/000.png": 200,
        "test/crack/001.png": 210,
    }
    for name, level in levels.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.full((16, 16), level, np.uint8))
    for stem in ("000", "001"):
        (root / "ground_truth/crack").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"ground_truth/crack/{stem}_mask.png"), BLOCK[:16, :16] * 255)
    return root


def test_layout_accepts_no_ground_truth_only_when_told(tmp_path: Path) -> None:
    root = _raw_category(tmp_path / "cat")
    assert find_problems(root) == []
    # Only some defect images lack masks: refused, whatever data.masks says about a set with masks.
    (root / "ground_truth/crack/001_mask.png").unlink()
    assert any("test/crack/001.png: defective test image has no mask" in p for p in find_problems(root))
    problems = find_problems(root, masks="none")
    assert any(
        p.startswith("ground_truth/: data.masks is 'none'") and "delete or move ground_truth/" in p for p in problems
    )
    # No ground_truth/ at all: refused by default with the way out, accepted with data.masks: none.
    (root / "ground_truth/crack/000_mask.png").unlink()
    (root / "ground_truth/crack").rmdir()
    (root / "ground_truth").rmdir()
    refused = find_problems(root)
    assert len(refused) == 1 and "have no masks" in refused[0] and "data.masks: none" in refused[0]
    assert find_problems(root, masks="none") == []
    settings = parse_params({"preprocess": {"image_size": 32}}).preprocess
    preprocess_category(root, tmp_path / "processed", settings, masks="none")
    data = load_processed(tmp_path / "processed")
    assert data.masks == "none" and [item.mask for item in data.test_items] == [None, None, None]


def test_data_masks_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"data.masks: 'pixels' is not one of pixel, none"):
        parse_params({"data": {"masks": "pixels"}})
    with pytest.raises(ConfigError, match=r"data.masks: 'none' \(image labels only\) is for data.source folder"):
        parse_params({"data": {"masks": "none"}})
    assert parse_params({"data": {"masks": "none", "source": "folder", "root": "/x"}}).data.masks == "none"
    with pytest.raises(ConfigError, match=r"thresholds.fpr_percents: 100 is not a false-alarm rate"):
        parse_params({"thresholds": {"fpr_percents": [100.0]}})
    with pytest.raises(ConfigError, match=r"evaluate.gallery_size: must be >= 0"):
        parse_params({"evaluate": {"gallery_size": -1}})
