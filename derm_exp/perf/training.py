"""Training throughput of the trainer's own setup (:func:`build_train_parts`): a per-phase step
breakdown, and the trainer's epoch loop fed by synthetic tensors vs by the real DataLoader
(their ratio shows whether data loading starves it)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from derm_exp.data.metadata import CLASSES
from derm_exp.perf.timing import median, sync
from derm_exp.runtime import Precision
from derm_exp.training.data_setup import Loaders, build_loaders, split_frame
from derm_exp.training.loop import optimizer_steps, train_one_epoch
from derm_exp.training.schedulers import BatchScheduler
from derm_exp.training.stages import ALL_LAYERS, make_optimizer
from derm_exp.training.trainer import TrainParts, accumulation, build_parts


@dataclass
class TimedTraining:
    """The trainer's own parts and the optimizer and schedule of the stage that is timed."""

    parts: TrainParts
    optimizer: torch.optim.Optimizer
    scheduler: BatchScheduler
    stage: int


def build_train_parts(
    cfg: DictConfig,
    model: torch.nn.Module,
    loaders: Loaders,
    device: torch.device,
    precision: Precision,
) -> TimedTraining:
    """What a training run trains ``model`` with, from the trainer itself
    (:func:`~derm_exp.training.trainer.build_parts`: the loss with its class weights, mixup,
    EMA, step context, scaler, ``trainer.compile``), and the optimizer and schedule of the
    all-layers stage (:func:`~derm_exp.training.stages.make_optimizer`; at
    ``trainer.finetune_lr`` after a frozen-backbone stage): the stage every run has, and the
    costlier one per step."""
    parts = build_parts(cfg, model, loaders.train_labels, device, precision)
    updates = optimizer_steps(len(loaders.train), accumulation(cfg))
    optimizer, scheduler = make_optimizer(cfg, model, ALL_LAYERS, updates)
    return TimedTraining(parts, optimizer, scheduler, ALL_LAYERS)


def train_section(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device, precision: Any, size: int
) -> dict[str, Any]:
    """Step breakdown on synthetic tensors, then the trainer's loop fed by synthetic tensors
    (before and after, averaged) and by the real training loader for each worker count; the
    training parts are the trainer's own (:func:`build_train_parts`)."""
    b = cfg.benchmark
    warmup, batches = int(b.warmup), int(b.batches)
    frame = split_frame(cfg.data)
    configured = int(cfg.data.num_workers)
    counts = [configured] + [int(w) for w in b.get("real_loader_workers") or [] if w != configured]
    loaders = {w: _loaders(cfg, frame, w, model.data_config, device) for w in counts}
    timed = build_train_parts(cfg, model, loaders[configured], device, precision)
    batch = synthetic_batch(int(cfg.data.batch_size), size)
    step = step_breakdown(timed, batch, max(1, warmup), batches)
    synthetic = [loop_throughput(timed, repeat_batch(batch), warmup, batches)]
    real: dict[int, dict[str, Any]] = {}
    for workers, split_loaders in loaders.items():
        train_loader = split_loaders.train
        real[workers] = loop_throughput(
            timed,
            lambda: train_loader,  # noqa: B023 (consumed right here)
            warmup,
            batches,
        )
    synthetic.append(loop_throughput(timed, repeat_batch(batch), warmup, batches))
    cached = any(split.train.dataset.images is not None for split in loaders.values())
    return {
        "batch_size": int(cfg.data.batch_size),
        "workers": configured,
        "cached": cached,
        "stage": "all layers" if timed.stage == ALL_LAYERS else "head only",
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "loss": _loss_summary(timed.parts.criterion),
        "optimizer": {
            "name": type(timed.optimizer).__name__,
            "lr": timed.optimizer.defaults.get("lr"),
            "foreach": timed.optimizer.defaults.get("foreach"),
            "fused": timed.optimizer.defaults.get("fused"),
        },
        "step": step,
        **_throughputs(synthetic, real, configured),
    }


def _loss_summary(criterion: torch.nn.Module) -> dict[str, Any]:
    weight = getattr(criterion, "weight", None)
    return {
        "name": type(criterion).__name__,
        "class_weights": None if weight is None else [float(w) for w in weight],
    }


def _loaders(
    cfg: DictConfig, frame: Any, workers: int, data_config: dict, device: torch.device
) -> Loaders:
    """The training run's loaders with ``data.num_workers=workers``."""
    data_cfg = cfg.data.copy()
    data_cfg.num_workers = workers
    return build_loaders(frame, data_cfg, cfg.augment, data_config, device)


def _throughputs(
    synthetic: list[dict[str, Any]], real: dict[int, dict[str, Any]], configured: int
) -> dict[str, Any]:
    """Loop throughput figures: synthetic (mean of the runs), real loader by worker count."""
    synthetic_img_s = sum(r["img_s"] for r in synthetic) / len(synthetic)
    return {
        "synthetic_img_s": synthetic_img_s,
        "synthetic_img_s_before_after": [r["img_s"] for r in synthetic],
        "synthetic_cpu_ms_per_image": sum(r["cpu_ms_per_image"] for r in synthetic)
        / len(synthetic),
        "real_loader_img_s": real[configured]["img_s"],
        "real_over_synthetic": real[configured]["img_s"] / synthetic_img_s,
        "real_loader_img_s_by_workers": {str(w): r["img_s"] for w, r in real.items()},
        "real_over_synthetic_by_workers": {
            str(w): r["img_s"] / synthetic_img_s for w, r in real.items()
        },
        # CPU time of the main process per image; with 0 workers it includes all data loading.
        "real_loader_cpu_ms_per_image_by_workers": {
            str(w): r["cpu_ms_per_image"] for w, r in real.items()
        },
    }


def synthetic_batch(batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking random images and labels on the CPU (like a loader's output)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    return images, torch.randint(0, len(CLASSES), (batch_size,), generator=g)


def step_breakdown(
    timed: TimedTraining, batch: tuple[torch.Tensor, torch.Tensor], warmup: int, repeats: int
) -> dict[str, Any]:
    """Median seconds of forward(+loss), backward, optimizer (clip + step) and EMA update,
    with a device sync after each phase; the first step (compilation, kernel selection) apart."""
    p, ctx, optimizer = timed.parts, timed.parts.ctx, timed.optimizer
    device = ctx.device
    images = batch[0].to(device)
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = batch[1].to(device)
    p.train_model.train()
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "ema": []}
    first = 0.0
    for i in range(warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        with ctx.precision.autocast(device):
            loss = p.criterion(p.train_model(images).float(), targets)
        sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if p.scaler is not None:
            p.scaler.scale(loss).backward()
            p.scaler.unscale_(optimizer)
        else:
            loss.backward()
        sync(device)
        t2 = time.perf_counter()
        if ctx.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), ctx.grad_clip_norm)
        if p.scaler is not None:
            p.scaler.step(optimizer)
            p.scaler.update()
        else:
            optimizer.step()
        sync(device)
        t3 = time.perf_counter()
        if p.ema is not None:
            p.ema.update(p.model, step=i)
        sync(device)
        t4 = time.perf_counter()
        if i == 0:
            first = t4 - t0
        if i >= warmup:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[name].append(dt)
    ms = {f"{k}_ms": median(v) * 1000 for k, v in phases.items()}
    total = sum(ms.values())
    return {
        **ms,
        "total_ms": total,
        "img_s": images.shape[0] / (total / 1000),
        "first_step_s": first,
    }


class _CountedBatches:
    """``warmup + timed`` batches from ``make_iter()`` (restarted when exhausted, like epochs);
    records when the first timed batch is requested and how many images were timed."""

    def __init__(
        self, make_iter: Callable[[], Iterator], warmup: int, timed: int, device: torch.device
    ) -> None:
        self.make_iter, self.warmup, self.timed, self.device = make_iter, warmup, timed, device
        self.started: float | None = None
        self.cpu_started: float | None = None
        self.images = 0

    def __len__(self) -> int:  # train_one_epoch's progress bar asks
        return self.warmup + self.timed

    def __iter__(self) -> Iterator:
        source = self.make_iter()
        for i in range(len(self)):
            if i == self.warmup:
                sync(self.device)
                self.started = time.perf_counter()
                self.cpu_started = time.process_time()
            try:
                batch = next(source)
            except StopIteration:
                source = self.make_iter()
                batch = next(source)
            if i >= self.warmup:
                self.images += int(batch[0].shape[0])
            yield batch


def loop_throughput(
    training: TimedTraining, batches: Callable[[], Iterable], warmup: int, timed: int
) -> dict[str, Any]:
    """Images per second of the trainer's ``train_one_epoch`` over ``timed`` batches (after
    ``warmup``), data loading included: the time a real epoch takes per image.

    ``cpu_ms_per_image``: CPU time of this process (all its threads; DataLoader workers not
    included) per image.
    """
    p = training.parts
    source = _CountedBatches(lambda: iter(batches()), warmup, timed, p.ctx.device)
    train_one_epoch(
        p.train_model,
        source,
        p.criterion,
        training.optimizer,
        training.scheduler,
        p.ctx,
        first_update=0,
        epoch=1,
        scaler=p.scaler,
        mixup=p.mixup,
        ema=p.ema,
        desc="benchmark",
    )
    sync(p.ctx.device)
    elapsed = time.perf_counter() - source.started
    cpu = time.process_time() - source.cpu_started
    return {
        "img_s": source.images / elapsed,
        "cpu_ms_per_image": cpu * 1000 / source.images,
        "seconds": elapsed,
        "batches": timed,
    }


def repeat_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], Iterable]:
    return lambda: itertools.repeat(batch)
