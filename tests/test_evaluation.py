"""The evaluate and report steps on a tiny trained category."""

import json

import numpy as np
import pytest
import tifffile

from anomaly_spotter.config import parse_params
from anomaly_spotter.dataset.preprocessing import preprocess_category
from anomaly_spotter.dataset.processed import load_processed
from anomaly_spotter.detectors import load_model
from anomaly_spotter.errors import UserError
from anomaly_spotter.evaluation.evaluate import evaluate_category
from anomaly_spotter.evaluation.report import summarise, write_report
from anomaly_spotter.sources.synthetic import generate_category
from anomaly_spotter.training import train_category
from conftest import TINY_RECONSTRUCTION as TINY_PARAMS
from conftest import deep_update, validation_thresholds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    params = parse_params(deep_update(TINY_PARAMS, {"evaluate": {"export_maps": True}}))
    generate_category("washer", root / "raw", params.data.synthetic)
    preprocess_category(root / "raw", root / "processed", params.preprocess)
    data = load_processed(root / "processed")
    train_category(data, params, root / "model.pt", root / "ck", root / "logs", progress=False)
    model, _ = load_model(root / "model.pt")
    thresholds = validation_thresholds(model, data, params)
    return root, params, data, model, thresholds


def test_evaluate_writes_metrics_plots_and_results(trained):
    root, params, data, model, thresholds = trained
    results = evaluate_category(
        data,
        root / "raw",
        model,
        thresholds,
        params,
        category="washer",
        metrics_path=root / "metrics.json",
        plots_dir=root / "plots",
        results_dir=root / "results",
    )
    written = json.loads((root / "metrics.json").read_text())
    assert written["image_auroc"] == pytest.approx(results["image_auroc"])
    for key in ("image_auroc", "pixel_auroc", "au_pro", "accuracy", "precision", "recall", "f1", "f1_max_oracle"):
        assert 0.0 <= written[key] <= 1.0
    assert written["tp"] + written["fn"] == int(data.test_labels.sum())
    assert written["tn"] + written["fp"] == int((data.test_labels == 0).sum())
    assert set(written["per_defect_image_auroc"]) == {"scratch", "crack", "missing"}
    assert written["threshold"] == pytest.approx(thresholds.threshold, rel=1e-9)
    for name in ("roc.json", "pr.json", "pro.json", "scores.json", "heatmaps.png", "score_histogram.png"):
        assert (root / "plots" / name).stat().st_size > 0
    # Chart data for the .dvc/plots templates: DVC wants the same keys in every row of a file.
    negatives = written["fp"] + written["tn"]
    for name, key, point in (
        ("roc", "roc", {"fpr": written["fp"] / negatives, "tpr": written["recall"]}),
        ("pr", "pr", {"recall": written["recall"], "precision": written["precision"]}),
    ):
        rows = json.loads((root / "plots" / f"{name}.json").read_text())[key]
        assert len({frozenset(row) for row in rows}) == 1
        marked = [row for row in rows if row["operating_point"]]
        assert len(marked) == 1 and marked[0]["threshold"] == pytest.approx(written["threshold"])
        assert {k: marked[0][k] for k in point} == pytest.approx(point)
    pro = json.loads((root / "plots" / "pro.json").read_text())["pro"]
    assert {row["au_pro"] for row in pro} == {written["au_pro"]}
    assert pro[0]["fpr"] == 0.0 and pro[-1]["fpr"] == pytest.approx(0.3)
    area = float(np.trapezoid([r["pro"] for r in pro], [r["fpr"] for r in pro])) / 0.3
    assert area == pytest.approx(written["au_pro"], abs=0.02)  # exact unless the curve was subsampled
    scores = json.loads((root / "plots" / "scores.json").read_text())["scores"]
    assert [row["label"] for row in scores] == ["defect" if label else "good" for label in data.test_labels]
    assert {row["threshold"] for row in scores} == {written["threshold"]}
    rows = (root / "results" / "scores.csv").read_text().splitlines()
    assert len(rows) == len(data.test) + 1
    # MVTec evaluation layout, float32, original image size
    item = data.test_items[-1]
    tiff = (
        root
        / "results"
        / "anomaly_maps"
        / "washer"
        / "test"
        / item.defect_type
        / f"{item.file.split('/')[-1][:-4]}.tiff"
    )
    amap = tifffile.imread(tiff)
    assert amap.dtype == np.float32 and amap.shape == (item.height, item.width)


def test_evaluate_outputs_are_deterministic(trained, tmp_path):
    root, params, data, model, thresholds = trained
    for name in ("a", "b"):
        evaluate_category(
            data,
            root / "raw",
            model,
            thresholds,
            params,
            category="washer",
            metrics_path=tmp_path / name / "m.json",
            plots_dir=tmp_path / name / "plots",
            results_dir=tmp_path / name / "results",
        )
    for path in sorted((tmp_path / "a").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path.name


def test_report_means_and_missing_category(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"image_auroc": 1.0, "f1": 0.5, "threshold": 3.0}))
    (tmp_path / "b.json").write_text(json.dumps({"image_auroc": 0.5, "f1": 1.0, "threshold": 1.0}))
    summary = write_report(["a", "b"], tmp_path, tmp_path / "summary.json", tmp_path / "summary.md")
    assert summary["image_auroc"] == {"a": 1.0, "b": 0.5, "mean": 0.75}
    assert "mean" not in summary["threshold"]  # averaging thresholds of different categories means nothing
    table = (tmp_path / "summary.md").read_text()
    assert "| image_auroc | 1 | 0.5 | 0.75 |" in table
    # Compact table first (metrics only without params), then the full one.
    assert table.index("| category | image AUROC |") < table.index("| metric |")
    assert "| a | 1 | n/a | n/a | 0.5 |" in table


def test_report_compact_table_shows_each_categorys_params(tmp_path):
    from anomaly_spotter.config import parse_params
    from anomaly_spotter.evaluation.report import key_params

    for name, auroc in (("weave", 1.0), ("marble", 0.5)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"image_auroc": auroc, "au_pro": 0.25, "f1": 0.5}))
    raw = {"data": {"categories": ["weave", "marble"]}, "presets": {"marble": {"train": {"epochs": 3}}}}
    params = {cat: key_params(parse_params(raw, cat)) for cat in ("weave", "marble")}
    write_report(["weave", "marble"], tmp_path, tmp_path / "summary.json", tmp_path / "summary.md", params)
    table = (tmp_path / "summary.md").read_text()
    assert (
        "| category | model | image size | epochs | score map | image score | thresholds | "
        "image AUROC | pixel AUROC | AU-PRO | F1 |" in table
    )
    assert "| weave | discriminative | 128 | 10 | auto | topk_mean | percentile_99 | 1 | n/a | 0.25 | 0.5 |" in table
    assert "| marble | discriminative | 128 | 3 |" in table  # the preset, not the global value
    assert "| mean |  |  |  |  |  |  | 0.75 | n/a | 0.25 | 0.5 |" in table
    with pytest.raises(UserError, match="c.json"):
        write_report(["a", "c"], tmp_path, tmp_path / "s2.json", tmp_path / "s2.md")
    assert summarise({}) == {}
