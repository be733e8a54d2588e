"""Surviving faults: SIGKILL mid-training resumes to the same bytes; Ctrl-C keeps the checkpoint.

The signal is sent while the run is parked right after its first checkpoint (the loop's test-only
``ANOMALY_SPOTTER_TEST_PAUSE_AFTER_CHECKPOINT`` hook), never by racing the epochs: on a fast
machine a polling test could otherwise see every epoch finish before it sent the signal.
"""

import contextlib
import signal
import subprocess
import sys
import time

import pytest
import yaml

from anomaly_spotter.training.checkpoint import CHECKPOINT_NAME
from anomaly_spotter.training.loop import PAUSE_AFTER_CHECKPOINT_ENV
from conftest import REPO, deep_update, make_processed, tool_env
from conftest import TINY_RECONSTRUCTION as TINY_PARAMS

PARAMS = deep_update(TINY_PARAMS, {"train": {"epochs": 6}, "data": {"synthetic": {"train_good": 24}}})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    make_processed(root, PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def train_cmd(root, name):
    return [
        sys.executable,
        str(REPO / "stages" / "train.py"),
        "--category",
        "weave",
        "--data",
        str(root / "processed"),
        "--model",
        str(root / name / "model.pt"),
        "--checkpoints",
        str(root / name / "ck"),
        "--logs",
        str(root / name / "logs"),
    ]


@contextlib.contextmanager
def paused_after_first_checkpoint(root, name, timeout=120):
    """A training run parked right after writing its first checkpoint; killed on the way out."""
    marker = root / f"{name}.paused"
    env = {**tool_env(), PAUSE_AFTER_CHECKPOINT_ENV: str(marker)}
    process = subprocess.Popen(
        train_cmd(root, name), cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run did not reach its first checkpoint"
            time.sleep(0.05)
        assert (root / name / "ck" / CHECKPOINT_NAME).is_file()
        yield process
    finally:
        if process.poll() is None:  # the test failed before signalling: do not leave it waiting
            process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def test_sigkill_then_rerun_resumes_and_matches_uninterrupted(workdir):
    subprocess.run(train_cmd(workdir, "full"), cwd=workdir, env=tool_env(), check=True, capture_output=True)
    with paused_after_first_checkpoint(workdir, "killed") as process:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (workdir / "killed" / "model.pt").exists()
    rerun = subprocess.run(train_cmd(workdir, "killed"), cwd=workdir, env=tool_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stdout + rerun.stderr
    assert (workdir / "killed" / "model.pt").read_bytes() == (workdir / "full" / "model.pt").read_bytes()


def test_ctrl_c_stops_cleanly_and_keeps_the_checkpoint(workdir):
    with paused_after_first_checkpoint(workdir, "interrupted") as process:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "interrupted during epoch" in stderr and "resumes from it" in stderr
    assert "Traceback" not in stderr
    assert (workdir / "interrupted" / "ck" / CHECKPOINT_NAME).is_file()
    assert not (workdir / "interrupted" / "model.pt").exists()
    leftovers = [p for p in (workdir / "interrupted").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
