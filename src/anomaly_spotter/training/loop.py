"""The gradient training loop: one class that runs epochs, validates and keeps the best weights.

Used by the gradient-trained detector kinds (:class:`~anomaly_spotter.detectors.base.GradientDetector`:
``reconstruction`` and ``discriminative``); the detector supplies its networks and its loss,
this module the loop. Checkpoints and resume live in :mod:`.checkpoint`, logging in :mod:`.logs`,
optimizers in :mod:`.optim`.

What a reader should know:

* Every random choice derives from ``train.seed``: weights from ``torch.manual_seed``, the batch
  order of epoch ``e`` from a generator seeded with ``(seed, e)``, and each augmentation from
  ``(seed, e, index)`` (see :mod:`anomaly_spotter.training.datasets`). Deterministic algorithms and a fixed
  thread count make the bytes of the model file repeatable on one machine.
* After every epoch a checkpoint is written; a killed run resumes from it and ends with the
  same bytes as an uninterrupted run, because nothing random depends on process state.
* A non-finite loss or gradient stops training with an error naming the epoch and batch; no
  model file is written then.
* Under ``torchrun`` (or ``train.processes > 1``) the same loop runs data-parallel with DDP;
  see :mod:`anomaly_spotter.training.distributed` for how it stays equivalent to one process. Only
  rank 0 writes checkpoints, logs and the model.

Example:
    >>> result = train_by_gradient(DiscriminativeDetector, data, params, run)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from anomaly_spotter.config import Params
from anomaly_spotter.detectors.base import GradientDetector, save_model_file
from anomaly_spotter.errors import TrainingError, UserError
from anomaly_spotter.runtime import autocast_dtype, kernel_record, seed_everything, select_device
from anomaly_spotter.training import distributed
from anomaly_spotter.training.augment import build_augmentations
from anomaly_spotter.training.checkpoint import CHECKPOINT_NAME, RunState, fingerprint, save_checkpoint, try_resume
from anomaly_spotter.training.datasets import AnomalyDataset
from anomaly_spotter.training.logs import log_epoch, open_log, quiet, sample_grid
from anomaly_spotter.training.optim import make_optimizer, make_scheduler, step_scheduler
from anomaly_spotter.training.pasted_anomalies import AnomalyGenerator
from anomaly_spotter.training.run import FitResult, FitRun

if TYPE_CHECKING:
    from anomaly_spotter.dataset.processed import ProcessedCategory

# TEST-ONLY hook (tests/test_faults.py): set to a file path, the loop writes that file after each
# checkpoint and then waits to be killed, so a test interrupts the run at a known point instead
# of racing the epochs (on a fast machine all of them finished before a poll saw a checkpoint).
# Unset, as everywhere outside that test, it does nothing.
PAUSE_AFTER_CHECKPOINT_ENV = "ANOMALY_SPOTTER_TEST_PAUSE_AFTER_CHECKPOINT"
_PAUSE_LIMIT_S = 600  # an orphaned paused run ends by itself rather than sleeping forever


def _pause_after_checkpoint_for_tests() -> None:
    """Write the marker named by :data:`PAUSE_AFTER_CHECKPOINT_ENV` and wait for a signal (tests only).

    >>> _pause_after_checkpoint_for_tests()  # unset: returns at once
    """
    marker = os.environ.get(PAUSE_AFTER_CHECKPOINT_ENV)
    if not marker:
        return
    Path(marker).write_text("checkpoint written; waiting to be killed\n", encoding="utf-8")
    time.sleep(_PAUSE_LIMIT_S)  # SIGKILL ends it; SIGINT raises KeyboardInterrupt right here
    raise TrainingError(f"{PAUSE_AFTER_CHECKPOINT_ENV} is set and nothing stopped the run within {_PAUSE_LIMIT_S} s")


class Trainer:
    """One gradient run of one category's detector. See the module docstring for the guarantees."""

    def __init__(
        self,
        detector_class: type[GradientDetector],
        params: Params,
        data: ProcessedCategory,
        *,
        checkpoint_dir: Path,
        log_dir: Path,
        progress: bool = True,
    ):
        self.params = params
        self.config = params.train
        self.data = data
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        self.log_dir = Path(log_dir)
        self.progress = progress
        self.device = select_device(self.config.device)
        self.context = distributed.from_environment(self.device)  # rank 0 of 1 unless under torchrun
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", self.context.local_rank)
            torch.cuda.set_device(self.device)
        # CPU ranks share the cores: each gets its part, or they would all oversubscribe them.
        threads = self.config.num_threads or os.cpu_count() or 1
        seed_everything(
            self.config.seed, max(1, threads // self.context.world_size) if self.device.type == "cpu" else threads
        )
        # Built after seeding: the initial weights are a function of train.seed.
        self.model = cast(GradientDetector, detector_class.from_params(params).to(self.device))
        if self.device.type == "cpu":
            # channels_last runs these convolutions about 1.5x faster on CPU (bench/train_speed.py).
            self.model = self.model.to(memory_format=torch.channels_last)
        # What training calls: the model itself, or its DDP wrapper that averages gradients over
        # ranks. Saving, validation and checkpoints use self.model (the same parameters).
        self.train_model: torch.nn.Module = self.model
        if self.context.enabled:
            self.model = cast(GradientDetector, distributed.convert_batchnorm(self.model, self.device))
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.loss_fn = detector_class.training_loss(params).to(self.device)
        self.optimizer = make_optimizer(self.model, self.config)
        self.scheduler = make_scheduler(self.optimizer, self.config)
        # Mixed precision: the model runs in amp_dtype, losses and optimizer state stay float32.
        self.amp_dtype = autocast_dtype(self.device) if self.config.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        generator = AnomalyGenerator.from_config(params.anomalies)
        self.train_set = AnomalyDataset(
            data.train, build_augmentations(params.augment), seed=self.config.seed, generator=generator
        )
        # Validation pastes anomalies too (always the epoch-0 draw, so every epoch sees the same
        # ones): its loss then measures the training objective, defect removal included.
        self.val_set = AnomalyDataset(data.val, seed=self.config.seed, generator=generator)
        self.fingerprint = fingerprint(params, data)
        self.state = RunState.fresh(self.model)

    # -- one epoch --------------------------------------------------------------------------
    def _loss(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        *,
        global_batch: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """The detector's loss against the clean ``target`` and pasted ``mask``; also the reconstruction.

        ``global_batch``: this is one rank's part of a DDP batch, so batch-level sums are all-reduced.
        """
        with self._autocast():
            output = model(x)
        # The loss is computed in float32, outside autocast (see GradientDetector.training_loss).
        sum_over_batch = distributed.all_reduce_sum if global_batch and self.context.enabled else None
        loss, parts = self.loss_fn(output, target, mask, sum_over_batch)
        reconstruction = self.model.reconstruction(output)
        assert reconstruction is not None  # the gradient-trained kinds all reconstruct their input
        return loss, parts, reconstruction

    def _autocast(self):
        if self.amp_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _loader(self, dataset: AnomalyDataset, epoch: int, shuffle: bool) -> DataLoader:
        """Training: this rank's share of the epoch's seeded global batches. Validation: in order, whole."""
        if not shuffle:
            return DataLoader(
                dataset,
                batch_size=self.config.batch_size,
                num_workers=self.config.num_workers,
                pin_memory=self.device.type == "cuda",
            )
        sampler = distributed.RankBatchSampler(
            len(dataset), batch_size=self.config.batch_size, seed=self.config.seed, context=self.context
        )
        sampler.set_epoch(epoch)
        return DataLoader(
            dataset, batch_sampler=sampler, num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda"
        )

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.train_set.set_epoch(epoch)
        sums: dict[str, float] = {}
        count = 0
        show_bar = None if self.progress and self.context.is_main else True  # None: no bar when not a terminal
        bar = tqdm(
            self._loader(self.train_set, epoch, shuffle=True),
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            leave=False,
            disable=show_bar,
        )
        for batch_index, batch in enumerate(bar):
            x, target, mask = (self._to_device(t) for t in batch)  # (B, 3, S, S) x2 in [-1, 1], (B, 1, S, S)
            n = x.shape[0]
            loss, parts, _ = self._loss(self.train_model, x, target, mask, global_batch=True)
            loss_value = float(loss.detach())
            # All ranks decide on the global batch's loss, so they stop (or go on) together.
            global_loss, global_count = distributed.all_reduce_sums({"loss": loss_value * n}, n, self.context)
            if not math.isfinite(global_loss["loss"]):
                raise TrainingError(
                    f"loss is {global_loss['loss'] / global_count} at epoch {epoch + 1}, batch {batch_index + 1}; "
                    "lower train.lr, keep train.grad_clip > 0, or check the data. No model was written."
                )
            if self.context.enabled:
                # DDP averages gradients over ranks; weighting by this rank's share of the global
                # batch makes that average the gradient of the global batch's mean loss.
                loss = loss * (n * self.context.world_size / global_count)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            if not torch.isfinite(grad_norm) and not self.scaler.is_enabled():
                raise TrainingError(
                    f"gradient norm is {float(grad_norm)} at epoch {epoch + 1}, batch {batch_index + 1}; "
                    "lower train.lr or keep train.grad_clip > 0. No model was written."
                )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            count += n
            sums["loss"] = sums.get("loss", 0.0) + loss_value * n
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            bar.set_postfix(loss=f"{loss_value:.4f}")
        sums, count = distributed.all_reduce_sums(sums, count, self.context)
        return {k: v / count for k, v in sums.items()}

    @torch.inference_mode()
    def validate(self) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """Mean validation loss (and components), plus the first batch and its reconstruction."""
        self.model.eval()
        sums: dict[str, float] = {}
        count = 0
        first: tuple[torch.Tensor, torch.Tensor] | None = None
        for batch in self._loader(self.val_set, 0, shuffle=False):
            x, target, mask = (self._to_device(t) for t in batch)
            loss, parts, recon = self._loss(self.model, x, target, mask)
            n = x.shape[0]
            count += n
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            if first is None:
                first = (x[:4].float().cpu(), recon[:4].float().cpu())
        assert first is not None
        return {k: v / count for k, v in sums.items()}, first[0], first[1]

    # -- the loop ---------------------------------------------------------------------------
    def _resume(self, say: Callable[[str], None]) -> None:
        """Continue from this run's checkpoint when it matches (params, data, code); say what happened."""
        resumed, message = try_resume(
            self.checkpoint_path,
            self.fingerprint,
            self.device,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
        )
        if message:
            say(message)
        if resumed is not None:
            self.state = resumed

    def _save_checkpoint(self, epoch: int, *, completed: bool) -> None:
        """Everything needed to continue after ``epoch`` (0-based) finished, written by the main rank."""
        save_checkpoint(
            self.checkpoint_path,
            self.fingerprint,
            epoch=epoch + 1,
            completed=completed,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            state=self.state,
        )
        _pause_after_checkpoint_for_tests()

    def fit(self, model_path: Path) -> FitResult:
        say = tqdm.write if self.context.is_main else quiet
        self._resume(say)
        state = self.state
        resumed_from = state.start_epoch
        live = open_log(self.log_dir, resume=resumed_from > 0, is_main=self.context.is_main)
        epoch = state.start_epoch
        try:
            for epoch in range(state.start_epoch, self.config.epochs):
                train_stats = self.train_epoch(epoch)
                val_stats, sample_in, sample_out = self.validate()
                lr = self.optimizer.param_groups[0]["lr"]
                step_scheduler(self.scheduler, val_stats["loss"])
                improved = state.record(epoch, val_stats["loss"], self.model)
                log_epoch(live, epoch, train_stats, val_stats, lr)
                if self.config.sample_every and (
                    (epoch + 1) % self.config.sample_every == 0 or epoch + 1 == self.config.epochs
                ):
                    live.log_image("reconstructions.png", sample_grid(sample_in, sample_out))
                stop_early = self.config.patience > 0 and state.stale_epochs >= self.config.patience
                last_epoch = epoch + 1 == self.config.epochs or stop_early
                if self.context.is_main:
                    self._save_checkpoint(epoch, completed=last_epoch)
                say(
                    f"epoch {epoch + 1}/{self.config.epochs}: train {train_stats['loss']:.5f} "
                    f"val {val_stats['loss']:.5f}{' *' if improved else ''} lr {lr:.2e}"
                )
                if stop_early:
                    say(f"early stopping: no validation improvement for {self.config.patience} epochs")
                    break
        except KeyboardInterrupt:
            live.end()
            raise UserError(
                f"interrupted during epoch {epoch + 1}; the last finished epoch is kept in "
                f"{self.checkpoint_path} and `dvc repro` resumes from it"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(
                f"CUDA ran out of memory with train.batch_size={self.config.batch_size}; "
                f"try `dvc exp run -S train.batch_size={max(1, self.config.batch_size // 2)}` "
                "or a smaller preprocess.image_size"
            ) from None
        live.summary["best_epoch"] = state.best_epoch
        live.summary["best_val_loss"] = state.best_val
        live.end()
        details = {
            "epochs_run": epoch + 1 - resumed_from,
            "best_epoch": state.best_epoch,
            "best_val_loss": state.best_val,
            "resumed_from": resumed_from,
        }
        kernels = kernel_record(self.device, self.amp_dtype)
        summary = (
            f"best validation loss {state.best_val:.5f} at epoch {state.best_epoch} "
            f"({kernels['precision']}, {kernels['device']} {kernels['cpu_capability']}, {kernels['threads']} threads)"
        )
        if not self.context.is_main:
            return FitResult(False, summary, details)
        save_model_file(
            model_path,
            state.best_state,
            self.model.architecture(),
            best_epoch=state.best_epoch,
            best_val_loss=state.best_val,
            trained_with=kernels,
        )
        return FitResult(True, summary, details)


def train_by_gradient(
    detector_class: type[GradientDetector], data: ProcessedCategory, params: Params, run: FitRun
) -> FitResult:
    """Train ``detector_class`` on ``data`` and write ``run.model_path``."""
    trainer = Trainer(
        detector_class, params, data, checkpoint_dir=run.checkpoint_dir, log_dir=run.log_dir, progress=run.progress
    )
    return trainer.fit(Path(run.model_path))
