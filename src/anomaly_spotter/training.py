"""Stage ``train``: fit one detector per category, reproducibly, and survive interruptions.

What is trained (``params.yaml`` ``model`` and ``anomalies``):

* ``model.kind: reconstruction`` – the autoencoder alone. With ``anomalies.probability > 0``
  it learns *defect removal*: its input carries a synthetic anomaly
  (:mod:`anomaly_spotter.synthetic_anomalies`), its target is the clean image, so at test time
  it paints over real defects and the reconstruction error shows them.
* ``model.kind: discriminative`` – the same autoencoder plus a segmentation head
  (:mod:`anomaly_spotter.discriminative`) that sees input and reconstruction and learns the
  pasted mask (focal + Dice, ``loss.focal`` / ``loss.dice``), trained jointly (DRAEM).

What a reader should know:

* Every random choice derives from ``train.seed``: weights from ``torch.manual_seed``, the batch
  order of epoch ``e`` from a generator seeded with ``(seed, e)``, and each augmentation from
  ``(seed, e, index)`` (see :mod:`anomaly_spotter.data`). Deterministic algorithms and a fixed
  thread count make the bytes of the model file repeatable on one machine.
* After every epoch a checkpoint (model, optimizer, scheduler, AMP scaler, best weights,
  early-stopping state) is written atomically to ``checkpoints/<category>/last.pt``. A killed
  run resumes from it and ends with the same bytes as an uninterrupted run, because nothing
  random depends on process state. A checkpoint made with other params or data is ignored.
* A non-finite loss or gradient stops training with an error naming the epoch and batch; no
  model file is written then.
* Under ``torchrun`` (or ``train.processes > 1``) the same loop runs data-parallel with DDP;
  see :mod:`anomaly_spotter.distributed` for how it stays equivalent to one process. Only
  rank 0 writes checkpoints, logs and the model.

Example:
    >>> result = train_category(processed, params, model_path, checkpoint_dir, log_dir)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from anomaly_spotter import distributed
from anomaly_spotter.augment import build_augmentations
from anomaly_spotter.config import AnomaliesConfig, Params, TrainConfig, to_dict
from anomaly_spotter.data import AnomalyDataset, to_uint8
from anomaly_spotter.discriminative import SegmentationLoss
from anomaly_spotter.errors import TrainingError, UserError
from anomaly_spotter.fileio import atomic_open
from anomaly_spotter.losses import CombinedLoss
from anomaly_spotter.model import AnomalyModel, architecture, load_model, model_from_architecture, split_output  # noqa: F401  (load_model re-exported)
from anomaly_spotter.synthetic_anomalies import AnomalyGenerator

if TYPE_CHECKING:
    from anomaly_spotter.preprocessing import ProcessedCategory

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available; set train.device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, num_threads: int = 0) -> None:
    """Seed Python, NumPy and torch; fix threads; make torch's kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    # A fixed thread count: reductions split differently with another count, changing last bits.
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype ``train.amp`` uses on ``device``; None where it would not pay.

    CUDA: bfloat16 where supported, else float16 (with a gradient scaler). CPU: bfloat16 when
    oneDNN has a native bfloat16 path for this CPU (AVX-512 / AMX), which trains these
    convolutions about 1.8x faster on the 2-core reference machine (``bench/train_speed.py``);
    elsewhere bfloat16 is emulated, slower than float32, so training stays in float32.

    >>> autocast_dtype(torch.device("cpu")) in (torch.bfloat16, None)
    True
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN
            native = False
        return torch.bfloat16 if native else None
    return None


def build_model(params: Params) -> AnomalyModel:
    """The model described by ``params.model`` at ``params.preprocess.image_size``."""
    return model_from_architecture(architecture(params.model, params.preprocess.image_size))


def anomaly_generator(config: AnomaliesConfig) -> AnomalyGenerator | None:
    """The synthetic-anomaly generator ``params.anomalies`` describes; None when switched off."""
    if config.probability <= 0:
        return None
    return AnomalyGenerator(
        probability=config.probability,
        mask_kind=config.mask,
        sources=config.sources,
        opacity_min=config.opacity_min,
        opacity_max=config.opacity_max,
        foreground_only=config.foreground_only,
    )


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """The LR scheduler, stepped once per epoch (``plateau`` with the validation loss)."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.gamma, patience=max(1, config.patience // 2))
    return None


def fingerprint(params: Params, data: ProcessedCategory) -> str:
    """Hash of everything that shapes training: a checkpoint is resumed only when it matches."""
    h = hashlib.sha256()
    relevant = {k: to_dict(getattr(params, k)) for k in ("preprocess", "augment", "model", "anomalies", "loss", "train")}
    h.update(json.dumps(relevant, sort_keys=True).encode())
    for name in ("train.npy", "val.npy", "index.json"):
        h.update(hashlib.md5((data.root / name).read_bytes()).digest())
    return h.hexdigest()


def _save_torch(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue())


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    resumed_from: int  # epoch the run resumed after (0 = fresh start)
    written: bool = True  # False on DDP ranks other than 0, which write nothing


class Trainer:
    """One training run of one category. See the module docstring for the guarantees."""

    def __init__(self, params: Params, data: ProcessedCategory, *, checkpoint_dir: Path, log_dir: Path, progress: bool = True):
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
        seed_everything(self.config.seed, max(1, threads // self.context.world_size) if self.device.type == "cpu" else threads)
        self.model = build_model(params).to(self.device)
        if self.device.type == "cpu":
            # channels_last runs these convolutions about 1.5x faster on CPU (bench/train_speed.py).
            self.model = self.model.to(memory_format=torch.channels_last)
        # What training calls: the model itself, or its DDP wrapper that averages gradients over
        # ranks. Saving, validation and checkpoints use self.model (the same parameters).
        self.train_model: torch.nn.Module = self.model
        if self.context.enabled:
            self.model = distributed.convert_batchnorm(self.model, self.device)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.loss_fn = CombinedLoss(params.loss).to(self.device)
        self.segmentation_loss = SegmentationLoss(focal_weight=params.loss.focal, dice_weight=params.loss.dice) if params.model.kind == "discriminative" else None
        self.optimizer = make_optimizer(self.model, self.config)
        self.scheduler = make_scheduler(self.optimizer, self.config)
        # Mixed precision: the model runs in amp_dtype, losses and optimizer state stay float32.
        self.amp_dtype = autocast_dtype(self.device) if self.config.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        generator = anomaly_generator(params.anomalies)
        self.train_set = AnomalyDataset(data.train, build_augmentations(params.augment), seed=self.config.seed, generator=generator)
        # Validation pastes anomalies too (always the epoch-0 draw, so every epoch sees the same
        # ones): its loss then measures the training objective, defect removal included.
        self.val_set = AnomalyDataset(data.val, seed=self.config.seed, generator=generator)
        self.fingerprint = fingerprint(params, data)
        self.start_epoch = 0
        self.best_val = math.inf
        self.best_epoch = 0
        self.best_state = _cpu_state(self.model.state_dict())
        self.stale_epochs = 0

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, completed: bool) -> None:
        _save_torch(
            self.checkpoint_path,
            {
                "format": FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "epoch": epoch,  # epochs finished
                "completed": completed,
                "model": _cpu_state(self.model.state_dict()),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "scaler": self.scaler.state_dict(),
                "best_state": self.best_state,
                "best_val": self.best_val,
                "best_epoch": self.best_epoch,
                "stale_epochs": self.stale_epochs,
            },
        )

    def try_resume(self) -> str | None:
        """Load an unfinished checkpoint made with the same params and data; say what happened."""
        if not self.checkpoint_path.is_file():
            return None
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as exc:  # a checkpoint we cannot read is only a lost shortcut
            return f"ignoring unreadable checkpoint {self.checkpoint_path} ({exc}); starting fresh"
        if state.get("format") != FORMAT_VERSION or state.get("fingerprint") != self.fingerprint:
            return f"checkpoint {self.checkpoint_path} was made with other params or data; starting fresh"
        if state.get("completed"):
            return None  # a finished run is retrained from scratch (same bytes, full logs)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_state = state["best_state"]
        self.best_val = float(state["best_val"])
        self.best_epoch = int(state["best_epoch"])
        self.stale_epochs = int(state["stale_epochs"])
        self.start_epoch = int(state["epoch"])
        return f"resuming from {self.checkpoint_path} after epoch {self.start_epoch}"

    # -- one epoch --------------------------------------------------------------------------
    def _loss(self, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, global_batch: bool = False) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Reconstruction loss against the clean ``target`` (+ the head's mask loss); also the reconstruction.

        ``global_batch``: this is one rank's part of a DDP batch, so batch-level sums are all-reduced.
        """
        with self._autocast():
            output = model(x)
        recon, logits = split_output(output)
        # Losses in float32, outside autocast: SSIM's local variances and the focal term lose
        # too much in 16-bit (autocast would run SSIM's Gaussian convolutions in bf16/fp16).
        loss, parts = self.loss_fn(recon.float(), target)
        if self.segmentation_loss is not None and logits is not None:
            sum_over_batch = distributed.all_reduce_sum if global_batch and self.context.enabled else None
            segmentation, segmentation_parts = self.segmentation_loss(logits.float(), mask, sum_over_batch)
            loss = loss + segmentation
            parts = {**parts, **segmentation_parts}
        return loss, parts, recon

    def _autocast(self):
        if self.amp_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _loader(self, dataset: AnomalyDataset, epoch: int, shuffle: bool) -> DataLoader:
        """Training: this rank's share of the epoch's seeded global batches. Validation: in order, whole."""
        if not shuffle:
            return DataLoader(dataset, batch_size=self.config.batch_size, num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda")
        sampler = distributed.RankBatchSampler(len(dataset), batch_size=self.config.batch_size, seed=self.config.seed, context=self.context)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda")

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
        bar = tqdm(self._loader(self.train_set, epoch, shuffle=True), desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False, disable=show_bar)
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
    def fit(self, model_path: Path) -> TrainResult:
        from dvclive import Live  # deferred: dvclive imports a lot, and only training logs

        say = tqdm.write if self.context.is_main else _quiet
        message = self.try_resume()
        if message:
            say(message)
        resumed_from = self.start_epoch
        live = (
            Live(
                str(self.log_dir),
                resume=resumed_from > 0,
                dvcyaml=False,  # metrics and plots are declared in dvc.yaml by hand
                save_dvc_exp=False,  # no stray experiments from inside a stage
                report=None,
            )
            if self.context.is_main
            else _NoLogs()
        )
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, self.config.epochs):
                train_stats = self.train_epoch(epoch)
                val_stats, sample_in, sample_out = self.validate()
                lr = self.optimizer.param_groups[0]["lr"]
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(val_stats["loss"])
                elif self.scheduler is not None:
                    self.scheduler.step()
                improved = val_stats["loss"] < self.best_val
                if improved:
                    self.best_val, self.best_epoch, self.stale_epochs = val_stats["loss"], epoch + 1, 0
                    self.best_state = _cpu_state(self.model.state_dict())
                else:
                    self.stale_epochs += 1
                live.step = epoch + 1
                for name, value in train_stats.items():
                    live.log_metric(f"train/{name}", value)
                for name, value in val_stats.items():
                    live.log_metric(f"val/{name}", value)
                live.log_metric("lr", lr)
                if self.config.sample_every and ((epoch + 1) % self.config.sample_every == 0 or epoch + 1 == self.config.epochs):
                    live.log_image("reconstructions.png", _sample_grid(sample_in, sample_out))
                stop_early = self.config.patience > 0 and self.stale_epochs >= self.config.patience
                last_epoch = epoch + 1 == self.config.epochs or stop_early
                if self.context.is_main:
                    self.save_checkpoint(epoch + 1, completed=last_epoch)
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
        live.summary["best_epoch"] = self.best_epoch
        live.summary["best_val_loss"] = self.best_val
        live.end()
        if not self.context.is_main:
            return TrainResult(epoch + 1 - resumed_from, self.best_epoch, self.best_val, resumed_from, written=False)
        _save_torch(
            model_path,
            {
                "state_dict": self.best_state,
                "architecture": architecture(self.params.model, self.params.preprocess.image_size),
                "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val,
            },
        )
        return TrainResult(epoch + 1 - resumed_from, self.best_epoch, self.best_val, resumed_from)


def _quiet(message: str) -> None:
    """Where non-zero ranks print to: nowhere (rank 0 reports for all)."""


class _NoLogs:
    """What non-zero ranks log to: nothing (only rank 0 writes DVCLive files)."""

    def __init__(self) -> None:
        self.step = 0
        self.summary: dict[str, Any] = {}

    def log_metric(self, name: str, value: float) -> None:
        pass

    def log_image(self, name: str, image: np.ndarray) -> None:
        pass

    def end(self) -> None:
        pass


def _sample_grid(inputs: torch.Tensor, recons: torch.Tensor) -> np.ndarray:
    """Inputs on the top row, reconstructions below: uint8 (2*S, k*S, 3)."""
    top = np.concatenate(list(to_uint8(inputs)), axis=1)
    bottom = np.concatenate(list(to_uint8(recons)), axis=1)
    return np.concatenate([top, bottom], axis=0)


def train_category(data: ProcessedCategory, params: Params, model_path: Path, checkpoint_dir: Path, log_dir: Path, *, progress: bool = True) -> TrainResult:
    """Train one category end to end and write ``model_path``."""
    if data.image_size != params.preprocess.image_size:
        raise UserError(
            f"{data.root} holds {data.image_size}px images but preprocess.image_size is "
            f"{params.preprocess.image_size}; run `dvc repro` so preprocess runs again"
        )
    try:
        trainer = Trainer(params, data, checkpoint_dir=checkpoint_dir, log_dir=log_dir, progress=progress)
        return trainer.fit(Path(model_path))
    finally:
        distributed.shutdown()  # leaves the process group (if any) even when training failed
