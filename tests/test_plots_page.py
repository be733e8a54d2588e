"""The plots page of the real pipeline: what `dvc plots show` / `dvc plots diff` give a user.

Unit tests check the templates in ``.dvc/plots/`` (DVC's anchors, colour by revision) and the
training curve read back from DVCLive's files. The integration test runs the pipeline on tiny
params in a temporary repository, renders ``dvc plots show`` in headless Chromium (offline, as
in ``test_plots_offline.py``) and checks the charts by their titles: one training chart per
category, ROC, PR, PRO, score histogram and the per-defect-type bars per category, the heatmaps,
mistakes and selection images, and no chart titled with a file path. Then ``dvc plots diff``
between two revisions must put both in every chart. (``docs/plots.png`` is the same page for the
real default pipeline: ``make screenshot``.)
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from anomaly_spotter.evaluation.plots_template import DEFAULT_OUT, build_offline_template
from anomaly_spotter.training.logs import LOSS_CURVE, loss_curve_rows, write_loss_curve
from conftest import REPO, TINY_PARAMS, dvc, git, make_project
from test_plots_offline import MISSING_BUNDLES, NODE_MODULES, _chromium, _run

TEMPLATES = REPO / ".dvc" / "plots"
# What each category gets on the page, by the end of its chart title (see dvc.yaml).
CHART_TITLES = (
    "{cat} training loss (train vs validation)",
    "{cat} image-level ROC",
    "{cat} image-level precision-recall",
    "{cat} pixel-level PRO curve up to FPR 0.3",
    "{cat} image scores, good vs defect",
    "{cat} per defect type at the threshold",
)
# The images per category: heatmaps, the mistakes at the threshold and the fixed selection.
IMAGES = ("heatmaps.png", "mistakes.png", "selection.png")


def _templates_used() -> dict[str, dict]:
    """Every ``template:`` named by dvc.yaml's plots, loaded from .dvc/plots/."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    names = set()
    for stage in pipeline["stages"].values():
        for entry in stage.get("do", stage).get("plots", []):
            if isinstance(entry, dict):
                names |= {props["template"] for props in entry.values() if props and "template" in props}
    return {name: json.loads((TEMPLATES / f"{name}.json").read_text(encoding="utf-8")) for name in sorted(names)}


# --------------------------------------------------------------------------- unit tests


def test_dvc_yaml_templates_exist_and_colour_by_revision() -> None:
    templates = _templates_used()
    assert set(templates) == {"loss_curve", "curve_operating_point", "pro_curve", "score_histogram", "defect_types"}
    for name, content in templates.items():
        text = json.dumps(content)
        # DVC fills these anchors (dvc_render.vega_templates.Template.ANCHOR); data is required.
        for anchor in (
            "<DVC_METRIC_DATA>",
            "<DVC_METRIC_TITLE>",
            "<DVC_METRIC_X>",
            "<DVC_METRIC_X_LABEL>",
            "<DVC_METRIC_Y_LABEL>",
        ):
            assert anchor in text, f"{name} lacks {anchor}"
        # DVC's colour anchor becomes {"field": "rev", ...}: `dvc plots diff` colours by revision.
        assert '"color": "<DVC_METRIC_COLOR>"' in text, name
        assert content["$schema"].endswith("/vega-lite/v5.json")


def test_templates_fill_like_dvc_fills_them() -> None:
    from dvc_render import VegaRenderer

    rows = [
        {"fpr": 0.0, "tpr": 0.0, "threshold": 2.0, "operating_point": False, "rev": "a"},
        {"fpr": 1.0, "tpr": 1.0, "threshold": 0.0, "operating_point": False, "rev": "a"},
        {"fpr": 0.5, "tpr": 0.7, "threshold": 1.0, "operating_point": True, "rev": "a"},
    ]
    renderer = VegaRenderer(
        rows,
        "plots/x/roc.json",
        template="curve_operating_point",
        template_dir=str(TEMPLATES),
        x="fpr",
        y="tpr",
        title="x ROC",
        x_label="FPR",
        y_label="TPR",
    )
    spec = renderer.get_filled_template()
    assert "<DVC_METRIC" not in json.dumps(spec)
    assert spec["encoding"]["color"]["field"] == "rev" and spec["title"]["text"] == "x ROC"


def test_loss_curve_joins_train_and_validation_totals(tmp_path: Path) -> None:
    for folder, values in (("train", (2.0, 1.5)), ("val", (2.5, 1.75))):
        tsv = tmp_path / "plots" / "metrics" / folder / "loss.tsv"
        tsv.parent.mkdir(parents=True)
        tsv.write_text("step\tloss\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(values)), encoding="utf-8")
    assert loss_curve_rows(tmp_path) == [
        {"epoch": 1, "split": "train", "loss": 2.0},
        {"epoch": 2, "split": "train", "loss": 1.5},
        {"epoch": 1, "split": "validation", "loss": 2.5},
        {"epoch": 2, "split": "validation", "loss": 1.75},
    ]
    # A kind without epochs (patchcore) still gets the file the train stage declares, empty.
    empty = tmp_path / "patchcore"
    assert json.loads(write_loss_curve(empty).read_text(encoding="utf-8")) == {"loss": []}
    assert (empty / LOSS_CURVE).is_file()


# --------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline, reproduced and committed, then re-evaluated with another threshold strategy."""
    if MISSING_BUNDLES:
        pytest.skip(f"node_modules lacks {', '.join(MISSING_BUNDLES)}; `make setup` installs them (npm ci)")
    root = make_project(tmp_path_factory.mktemp("plots_page") / "repo")
    build_offline_template(NODE_MODULES, root / DEFAULT_OUT)
    dvc("repro", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "baseline", cwd=root)
    # A second revision that costs no training: thresholds, evaluate and report only.
    dvc("exp", "run", "-S", "thresholds.strategy=percentile_95", "-n", "p95", cwd=root)
    return root


def _values_of(spec: object, key: str) -> list[object]:
    """Every value stored under ``key`` anywhere in a nested Vega-Lite spec."""
    if isinstance(spec, dict):
        return [v for k, v in spec.items() if k == key] + [x for v in spec.values() for x in _values_of(v, key)]
    if isinstance(spec, list):
        return [x for v in spec for x in _values_of(v, key)]
    return []


def _page_titles_and_images(page: Path, profile: Path) -> tuple[list[str], int, str]:
    chromium = _chromium()
    env = dict(os.environ)
    dom = _run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=15000",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri(),
        ],
        profile.parent,
        env,
    ).stdout
    assert 'class="vega-error"' not in dom, "vega-embed reported an error"
    titles = [html.unescape(t) for t in re.findall(r"aria-label=\"Title text '(.*?)'\"", dom)]
    images = len(re.findall(r'<img src="static/', dom))
    return titles, images, dom


@pytest.mark.integration
def test_plots_page_has_one_chart_of_each_kind_per_category(pipeline_repo: Path, tmp_path: Path) -> None:
    root = pipeline_repo
    dvc("plots", "show", cwd=root)
    titles, images, dom = _page_titles_and_images(root / "dvc_plots" / "index.html", tmp_path / "profile")
    categories = TINY_PARAMS["data"]["categories"]
    expected = sorted(t.format(cat=cat) for cat in categories for t in CHART_TITLES)
    assert sorted(titles) == expected
    assert images == len(categories) * len(IMAGES)  # plots/<category>/{heatmaps,mistakes,selection}.png
    for cat in categories:
        assert all(f"plots/{cat}/{name}" in html.unescape(dom) for name in IMAGES), cat
    assert not [t for t in titles if re.search(r"[\\/]|\.(json|tsv|csv|png)\b", t)], titles
    # Data-driven parts of the templates drew: AU-PRO printed, the operating point labelled.
    assert len(re.findall(r">AU-PRO \d\.\d{3}</text>", dom)) == len(categories)
    assert len(re.findall(r">t = -?\d[^<]*</text>", dom)) == 2 * len(categories)

    shot = tmp_path / "plots.png"
    _run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=15000",
            "--window-size=1300,2900",
            f"--user-data-dir={tmp_path / 'profile2'}",
            f"--screenshot={shot}",
            (root / "dvc_plots" / "index.html").as_uri(),
        ],
        tmp_path,
        dict(os.environ),
    )
    assert shot.stat().st_size > 50_000, "the screenshot looks blank"


@pytest.mark.integration
def test_plots_diff_overlays_both_revisions_in_every_chart(pipeline_repo: Path, tmp_path: Path) -> None:
    root = pipeline_repo
    data = json.loads(dvc("plots", "diff", "HEAD", "p95", "--json", cwd=root).stdout)["data"]
    charts = {path: entries for path, entries in data.items() if entries}
    categories = TINY_PARAMS["data"]["categories"]
    assert len(charts) == len(categories) * (len(CHART_TITLES) + len(IMAGES))
    for path, entries in charts.items():
        for entry in entries:
            if entry["type"] == "vega":
                revs = {row["rev"] for row in entry["content"]["data"]["values"]}
                assert revs == {"HEAD", "p95"}, f"{path}: {revs}"
                colours = [c for c in _values_of(entry["content"], "color") if isinstance(c, dict) and c]
                assert colours and all(
                    c["field"] == "rev" and set(c["scale"]["domain"]) == {"HEAD", "p95"} for c in colours
                ), path
    # The histogram's threshold rule moved: the two revisions carry different thresholds.
    scores = charts[f"plots/{categories[0]}/scores.json"][0]["content"]["data"]["values"]
    assert len({(row["rev"], row["threshold"]) for row in scores}) == 2
    # The per-type bars of both revisions, and the same selection image drawn once per revision.
    bars = charts[f"plots/{categories[0]}/defect_types.json"][0]["content"]["data"]["values"]
    assert {row["rev"] for row in bars} == {"HEAD", "p95"} and {row["measure"] for row in bars} >= {
        "recall",
        "false-alarm rate",
    }
    selection = charts[f"plots/{categories[0]}/selection.png"]
    assert sorted(entry["revisions"][0] for entry in selection) == ["HEAD", "p95"]
    # And the page renders with both revisions in it.
    out = tmp_path / "diff"
    dvc("plots", "diff", "HEAD", "p95", "--out", str(out), cwd=root)
    titles, _, _ = _page_titles_and_images(out / "index.html", tmp_path / "profile")
    assert len(titles) == len(categories) * len(CHART_TITLES)
