"""The training loop: it learns, it is reproducible, it resumes exactly, and it fails clearly."""

import json

import numpy as np
import pytest
import torch

from anomaly_spotter.config import parse_params
from anomaly_spotter.dataset.processed import load_processed
from anomaly_spotter.detectors import detector_class, load_model
from anomaly_spotter.errors import TrainingError
from anomaly_spotter.training import train_category
from anomaly_spotter.training.checkpoint import CHECKPOINT_NAME
from anomaly_spotter.training.loop import Trainer
from conftest import TINY_RECONSTRUCTION as TINY_PARAMS
from conftest import deep_update, make_processed


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    return load_processed(make_processed(tmp_path_factory.mktemp("data"), TINY_PARAMS))


def params_with(**train):
    return parse_params(deep_update(TINY_PARAMS, {"train": {"epochs": 3, **train}}))


def test_training_writes_a_loadable_model_and_logs(processed, tmp_path):
    params = params_with()
    result = train_category(
        processed, params, tmp_path / "model.pt", tmp_path / "ck", tmp_path / "logs", progress=False
    )
    assert 1 <= result.details["best_epoch"] <= 3 and np.isfinite(result.details["best_val_loss"])
    model, payload = load_model(tmp_path / "model.pt")  # weights_only=True inside
    assert payload["architecture"]["base_channels"] == params.model.base_channels
    x = torch.zeros(1, 3, 32, 32)
    assert model(x).shape == x.shape
    metrics = json.loads((tmp_path / "logs" / "metrics.json").read_text())
    assert metrics["step"] == 3 and "val" in metrics and "train" in metrics
    for name in ("train/loss", "val/loss", "train/mse", "train/ssim", "lr"):
        assert (tmp_path / "logs" / "plots" / "metrics" / f"{name}.tsv").is_file()
    assert (tmp_path / "logs" / "plots" / "images" / "reconstructions.png").is_file()


def test_two_runs_give_identical_model_bytes(processed, tmp_path):
    params = params_with(epochs=2)
    for name in ("a", "b"):
        train_category(
            processed,
            params,
            tmp_path / name / "model.pt",
            tmp_path / name / "ck",
            tmp_path / name / "logs",
            progress=False,
        )
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


def test_resume_after_interruption_matches_uninterrupted_run(processed, tmp_path, monkeypatch):
    params = params_with(epochs=3)
    train_category(
        processed, params, tmp_path / "full.pt", tmp_path / "ck_full", tmp_path / "logs_full", progress=False
    )

    calls = {"n": 0}
    original = Trainer.train_epoch

    def crash_in_third_epoch(self, epoch):
        calls["n"] += 1
        if epoch == 2:
            raise RuntimeError("simulated kill")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_third_epoch)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_category(processed, params, tmp_path / "resumed.pt", tmp_path / "ck", tmp_path / "logs", progress=False)
    assert not (tmp_path / "resumed.pt").exists()
    assert (tmp_path / "ck" / CHECKPOINT_NAME).is_file()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    result = train_category(
        processed, params, tmp_path / "resumed.pt", tmp_path / "ck", tmp_path / "logs", progress=False
    )
    assert result.details["resumed_from"] == 2 and result.details["epochs_run"] == 1
    assert (tmp_path / "resumed.pt").read_bytes() == (tmp_path / "full.pt").read_bytes()


def test_checkpoint_from_other_params_is_not_resumed(processed, tmp_path, capsys):
    train_category(
        processed, params_with(epochs=2), tmp_path / "m.pt", tmp_path / "ck", tmp_path / "logs", progress=False
    )
    # Pretend the finished checkpoint was interrupted, then change the params.
    state = torch.load(tmp_path / "ck" / CHECKPOINT_NAME, weights_only=True)
    state["completed"] = False
    torch.save(state, tmp_path / "ck" / CHECKPOINT_NAME)
    result = train_category(
        processed, params_with(epochs=2, lr=0.01), tmp_path / "m.pt", tmp_path / "ck", tmp_path / "logs", progress=False
    )
    assert result.details["resumed_from"] == 0
    assert "other params or data; starting fresh" in capsys.readouterr().out


def test_non_finite_loss_stops_with_epoch_and_batch_and_writes_no_model(processed, tmp_path, monkeypatch):
    params = params_with()
    trainer = Trainer(
        detector_class(params.model.kind),
        params,
        processed,
        checkpoint_dir=tmp_path / "ck",
        log_dir=tmp_path / "logs",
        progress=False,
    )
    monkeypatch.setattr(
        trainer.loss_fn, "forward", lambda output, target, mask, sum_over_batch=None: (output.sum() * float("nan"), {})
    )
    with pytest.raises(TrainingError, match=r"epoch 1, batch 1"):
        trainer.fit(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "step", "none"])
def test_optimizers_and_schedulers_reduce_the_loss(processed, tmp_path, optimizer, scheduler):
    params = params_with(
        epochs=2, optimizer=optimizer, scheduler=scheduler, lr=0.01 if optimizer == "sgd" else 0.002, patience=2
    )
    trainer = Trainer(
        detector_class(params.model.kind),
        params,
        processed,
        checkpoint_dir=tmp_path / "ck",
        log_dir=tmp_path / "logs",
        progress=False,
    )
    before = trainer.validate()[0]["loss"]
    trainer.fit(tmp_path / "m.pt")
    assert trainer.state.best_val < before


def test_early_stopping(processed, tmp_path, monkeypatch):
    original = Trainer.validate
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.9, 1.0])  # best at epoch 2, then worse and worse

    def scripted_validate(self):
        stats, x, recon = original(self)
        return {**stats, "loss": next(losses)}, x, recon

    monkeypatch.setattr(Trainer, "validate", scripted_validate)
    params = params_with(epochs=6, patience=2)
    result = train_category(processed, params, tmp_path / "m.pt", tmp_path / "ck", tmp_path / "logs", progress=False)
    assert (result.details["epochs_run"], result.details["best_epoch"], result.details["best_val_loss"]) == (4, 2, 0.5)


def test_image_size_mismatch_is_reported(processed, tmp_path):
    params = parse_params(deep_update(TINY_PARAMS, {"preprocess": {"image_size": 64}}))
    with pytest.raises(Exception, match="preprocess.image_size"):
        train_category(processed, params, tmp_path / "m.pt", tmp_path / "ck", tmp_path / "logs", progress=False)


def test_cuda_out_of_memory_names_the_batch_size(processed, tmp_path, monkeypatch):
    def out_of_memory(self, epoch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_epoch", out_of_memory)
    with pytest.raises(TrainingError, match=r"train.batch_size=4; try `dvc exp run -S train.batch_size=2`"):
        train_category(processed, params_with(), tmp_path / "m.pt", tmp_path / "ck", tmp_path / "logs", progress=False)
    assert not (tmp_path / "m.pt").exists()


def test_security_models_load_with_weights_only(processed, tmp_path):
    train_category(
        processed, params_with(epochs=1), tmp_path / "m.pt", tmp_path / "ck", tmp_path / "logs", progress=False
    )
    # A pickle that would run code on load is refused by weights_only=True.
    import pickle

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "architecture": Exploit()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        load_model(tmp_path / "evil.pt")


DISCRIMINATIVE = {
    "model": {"kind": "discriminative", "head_channels": 4, "head_depth": 2},
    "anomalies": {"probability": 0.5},
}


def test_discriminative_training_saves_a_detector_that_scores_with_its_head(processed, tmp_path):
    from anomaly_spotter.detectors.discriminative import DiscriminativeDetector
    from anomaly_spotter.scoring import score_images

    params = parse_params(deep_update(TINY_PARAMS, {**DISCRIMINATIVE, "train": {"epochs": 2}}))
    train_category(processed, params, tmp_path / "model.pt", tmp_path / "ck", tmp_path / "logs", progress=False)
    model, payload = load_model(tmp_path / "model.pt")
    assert isinstance(model, DiscriminativeDetector)
    assert payload["architecture"]["kind"] == "discriminative" and payload["architecture"]["head_channels"] == 4
    recon, logits = model(torch.zeros(2, 3, 32, 32))
    assert recon.shape == (2, 3, 32, 32) and logits.shape == (2, 1, 32, 32)
    for name in ("train/focal", "train/dice", "val/focal", "val/dice"):  # the head's losses are logged
        assert (tmp_path / "logs" / "plots" / "metrics" / f"{name}.tsv").is_file(), name
    scored = score_images(model, processed.test, params.score)  # score.map auto -> the head's map
    assert scored.maps.shape == (len(processed.test), 32, 32)
    assert scored.maps.min() >= 0.0 and scored.maps.max() <= 1.0


def test_defect_removal_training_targets_the_clean_image(processed):
    """With anomalies on, the dataset gives (corrupted input, clean target, mask), reproducibly."""
    from anomaly_spotter.training.datasets import AnomalyDataset
    from anomaly_spotter.training.pasted_anomalies import AnomalyGenerator

    params = parse_params(deep_update(TINY_PARAMS, {"anomalies": {"probability": 1.0}}))
    dataset = AnomalyDataset(processed.train, seed=0, generator=AnomalyGenerator.from_config(params.anomalies))
    plain = AnomalyDataset(processed.train, seed=0)
    x, target, mask = dataset[1]
    assert torch.equal(target, plain[1][1])  # the target is the clean image
    changed = (x != target).any(dim=0)
    assert mask.sum() > 0 and not changed[mask[0] == 0].any()  # only masked pixels differ
    again = dataset[1]
    assert all(torch.equal(a, b) for a, b in zip((x, target, mask), again, strict=False))
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][2], mask)  # a new epoch draws a new anomaly
    assert AnomalyGenerator.from_config(parse_params(TINY_PARAMS).anomalies) is None  # probability 0: off


def test_cpu_mixed_precision_runs_the_model_in_bfloat16_and_keeps_float32_weights(processed, tmp_path, monkeypatch):
    """train.amp on a CPU with native bfloat16: the model's convolutions run in bfloat16, the
    weights, losses and saved model stay float32, and training follows float32 training closely."""
    from anomaly_spotter.training import loop

    monkeypatch.setattr(loop, "autocast_dtype", lambda device: torch.bfloat16)  # as on a bf16-capable CPU
    seen: list[torch.dtype] = []
    losses = {}
    for amp in (True, False):
        params = parse_params(
            deep_update(TINY_PARAMS, {**DISCRIMINATIVE, "train": {"epochs": 2, "amp": amp, "device": "cpu"}})
        )
        trainer = Trainer(
            detector_class(params.model.kind),
            params,
            processed,
            checkpoint_dir=tmp_path / f"ck{amp}",
            log_dir=tmp_path / f"logs{amp}",
            progress=False,
        )
        hook = (
            trainer.model.head.register_forward_hook(lambda module, args, out: seen.append(out.dtype)) if amp else None
        )
        losses[amp] = trainer.train_epoch(0)
        if hook:
            hook.remove()
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert trainer.amp_dtype == (torch.bfloat16 if amp else None)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(np.isfinite(v) for v in losses[True].values())
    # One epoch from the same initial weights: bfloat16 rounding moves the loss, but only a little.
    assert losses[True]["loss"] == pytest.approx(losses[False]["loss"], rel=0.05)
