"""The real `dvc` CLI over a temporary copy of the project, on tiny params.

One repository is built per module and the checks run in order on it, as a user would:
repro, repro again (nothing to do), an experiment with a changed loss weight, then comparing.
"""

import json
import subprocess
import time

import pytest

from conftest import BIN, dvc, git, make_project, tool_env

pytestmark = pytest.mark.integration
CATEGORIES = ("weave", "washer")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("pipeline") / "repo")
    first = dvc("repro", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "baseline", cwd=root)
    return root, first.stdout


def test_repro_writes_every_output(project):
    root, _ = project
    for cat in CATEGORIES:
        assert (root / "data" / "raw" / cat / "train" / "good").is_dir()
        assert (root / "data" / "processed" / cat / "train.npy").is_file()
        assert (root / "models" / cat / "model.pt").is_file()
        thresholds = json.loads((root / "models" / cat / "thresholds.json").read_text())
        assert thresholds["threshold"] == thresholds["thresholds"][thresholds["strategy"]]
        metrics = json.loads((root / "metrics" / f"{cat}.json").read_text())
        for key in ("image_auroc", "accuracy", "precision", "recall", "f1"):
            assert 0.0 <= metrics[key] <= 1.0
        roc = json.loads((root / "plots" / cat / "roc.json").read_text())["roc"]
        assert roc[0]["fpr"] <= roc[-1]["fpr"] and {"fpr", "tpr"} <= set(roc[0])
        assert (root / "dvclive" / "train" / cat / "metrics.json").is_file()
        exported = json.loads((root / "metrics" / f"{cat}_export.json").read_text())
        assert (root / "models" / cat / "model.onnx").is_file() and exported["onnx_max_abs_diff_map"] <= 1e-4
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    assert set(summary["image_auroc"]) == {*CATEGORIES, "mean"}
    lock = (root / "dvc.lock").read_text()
    for stage in ("fetch", "preprocess", "train", "thresholds", "evaluate", "export"):
        for cat in CATEGORIES:
            assert f"{stage}@{cat}:" in lock
    assert "report:" in lock


def test_second_repro_runs_nothing(project):
    root, _ = project
    again = dvc("repro", cwd=root)
    assert "Running stage" not in again.stdout
    assert dvc("status", cwd=root).stdout.strip() in ("Data and pipelines are up to date.", "")


@pytest.fixture(scope="module")
def experiment(project):
    root, _ = project
    result = dvc("exp", "run", "-S", "loss.ssim=0.7", "-n", "ssim07", cwd=root)
    return root, result.stdout


def test_exp_run_reruns_only_training_onwards(experiment):
    _, output = experiment
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    expected = {f"{s}@{c}" for s in ("train", "thresholds", "evaluate", "export") for c in CATEGORIES} | {"report"}
    assert ran == expected


def test_exp_show_lists_the_experiment_with_metrics(experiment):
    root, _ = experiment
    rows = json.loads(dvc("exp", "show", "--json", cwd=root).stdout)
    names = json.dumps(rows)
    assert "ssim07" in names
    assert "image_auroc" in names and "metrics/summary.json" in names


def test_metrics_and_plots_diff_between_experiments(experiment):
    root, _ = experiment
    diff = json.loads(dvc("metrics", "diff", "HEAD", "ssim07", "--json", cwd=root).stdout)
    assert any(path.startswith("metrics/") for path in diff)
    plots = json.loads(dvc("plots", "diff", "HEAD", "ssim07", "--json", cwd=root).stdout)["data"]
    for cat in CATEGORIES:
        roc = [key for key in plots if key.endswith(f"plots/{cat}/roc.json")]
        assert roc, f"no ROC of {cat} in dvc plots diff: {sorted(plots)}"
        revisions = {rev for entry in plots[roc[0]] for rev in entry.get("revisions", [])}
        assert {"HEAD", "ssim07"} <= revisions


def queue_report(root) -> str:
    """What the queue did, for a failure message: its status and every task's log."""
    status = dvc("queue", "status", cwd=root, check=False).stdout
    tasks = [line.split()[0] for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")]
    logs = [dvc("queue", "logs", task, cwd=root, check=False) for task in tasks]
    return status + "".join(f"\n--- {task}\n{log.stdout}{log.stderr}" for task, log in zip(tasks, logs, strict=False))


def test_queued_sweep_runs_two_experiments_in_parallel(experiment, tmp_path):
    root, _ = experiment
    for weight in ("0.3", "0.9"):
        dvc("exp", "run", "--queue", "-S", f"loss.ssim={weight}", "-n", f"sweep-ssim-{weight}", cwd=root)
    # The workers are forked from `dvc queue start` and keep its stdout and stderr open until they
    # exit: with pipes (capture_output) the call would block for the whole sweep, so they get a file.
    with open(tmp_path / "queue-start.log", "w") as log:
        started = subprocess.run(
            [str(BIN / "dvc"), "queue", "start", "-j", "2"],
            cwd=root,
            env=tool_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert started.returncode == 0, (tmp_path / "queue-start.log").read_text()
    try:
        deadline = time.monotonic() + 600
        while True:
            status = dvc("queue", "status", cwd=root).stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, queue_report(root)
            time.sleep(2)
        assert status.count("Success") == 2, queue_report(root)
    finally:
        dvc("queue", "stop", "--kill", cwd=root, check=False)
    shown = dvc("exp", "show", "--json", cwd=root).stdout
    assert "sweep-ssim-0.3" in shown and "sweep-ssim-0.9" in shown


def test_artifacts_get_fetches_a_detector_from_a_clone(experiment, tmp_path):
    # Last in this module: it adds a remote and commits it. `dvc artifacts get` in a fresh clone
    # (nothing in its cache) must download the named file from the remote, byte-identical.
    root, _ = experiment
    git("reset", "-q", "--hard", cwd=root)  # back from the experiment's results to the committed baseline
    dvc("checkout", "--force", cwd=root)
    dvc("remote", "add", "-d", "shared", str(tmp_path / "remote"), cwd=root)
    git("add", ".dvc/config", cwd=root)
    git("commit", "-q", "-m", "remote", cwd=root)
    dvc("push", cwd=root)
    # `dvc artifacts get` resolves a name through its version tags (GTO's <name>@v<semver>,
    # what `gto register <name>` writes): register both at this commit.
    for name in ("weave-onnx", "washer-pt"):
        git("tag", "-a", f"{name}@v0.0.1", "-m", f"register {name}", cwd=root)
    clone = tmp_path / "clone"
    git("clone", "-q", str(root), str(clone), cwd=tmp_path)
    for name, path in (("weave-onnx", "models/weave/model.onnx"), ("washer-pt", "models/washer/model.pt")):
        out = tmp_path / "got" / name
        dvc("artifacts", "get", ".", name, "-o", str(out), cwd=clone)
        got = out / path.rsplit("/", 1)[1] if out.is_dir() else out
        assert got.read_bytes() == (root / path).read_bytes(), name
    # A named version, as the README shows it.
    named = tmp_path / "got" / "named.onnx"
    dvc("artifacts", "get", ".", "weave-onnx", "--rev", "v0.0.1", "-o", str(named), cwd=clone)
    assert named.read_bytes() == (root / "models/weave/model.onnx").read_bytes()
