"""bench/ablation.py end to end on a tiny synthetic category: every variant trains and is measured."""

import json
import sys

import yaml

from conftest import REPO, TINY_PARAMS, deep_update, run


def test_ablation_bench_measures_every_variant(tmp_path):
    params = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "ablation.json"
    result = run(
        [
            sys.executable,
            "bench/ablation.py",
            "--params",
            str(params_file),
            "--categories",
            "washer",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--set",
            "train.epochs=1",
            "--set",
            "model.head_channels=4",
            "--set",
            "model.head_depth=2",
        ],
        cwd=REPO,
    )
    rows = json.loads(out.read_text())["rows"]
    patchcore = ["patchcore_lite0", "patchcore_lite2", "patchcore_lite2_1pc"]
    assert [r["variant"] for r in rows] == [
        "ae_skips",
        "ae",
        "ae_skips_removal",
        "ae_removal",
        "discriminative",
        *patchcore,
    ]
    assert [r["map"] for r in rows] == ["ssim"] * 4 + ["head"] + ["distance"] * 3
    for row in rows:
        for key in ("val_synthetic_image_auroc", "image_auroc", "pixel_auroc", "au_pro"):
            assert 0.0 <= row[key] <= 1.0, (row["variant"], key)
        assert row["train_minutes"] > 0
        assert row["epochs"] == (None if row["variant"] in patchcore else 1)  # patchcore has no epochs
    assert "| discriminative | washer | head |" in result.stdout
