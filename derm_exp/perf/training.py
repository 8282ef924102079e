"""Training throughput: a per-phase step breakdown, and the trainer's own epoch loop fed by
synthetic tensors vs by the real DataLoader (their ratio shows whether data loading starves it)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from timm.utils import ModelEmaV3

from derm_exp.data.metadata import CLASSES
from derm_exp.perf.timing import median, sync
from derm_exp.runtime import Precision
from derm_exp.training.loop import StepContext, train_one_epoch
from derm_exp.training.losses import build_criterion
from derm_exp.training.mixing import build_mixup
from derm_exp.training.schedulers import build_scheduler
from derm_exp.training.trainer import compile_for_training


@dataclass
class TrainParts:
    """What the trainer builds around the model for one stage (see ``trainer.fit``)."""

    model: torch.nn.Module  # the module whose weights are trained
    train_model: torch.nn.Module  # the same, possibly torch.compile'd
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: torch.nn.Module
    ctx: StepContext
    scaler: torch.amp.GradScaler | None
    ema: ModelEmaV3 | None
    mixup: Any


def build_train_parts(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device, precision: Precision
) -> TrainParts:
    """Optimizer, scheduler, loss, EMA and step context exactly as a training run sets them up."""
    model.to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer)(params)
    ema = None
    if cfg.trainer.ema.enabled:
        ema = ModelEmaV3(model, decay=cfg.trainer.ema.decay, use_warmup=cfg.trainer.ema.warmup)
    return TrainParts(
        model=model,
        train_model=compile_for_training(model, cfg.trainer.get("compile", False)),
        optimizer=optimizer,
        scheduler=build_scheduler(cfg.scheduler, optimizer, 1, 1000),
        criterion=build_criterion(cfg.loss, None),
        ctx=StepContext(
            device=device,
            precision=precision,
            channels_last=bool(cfg.trainer.channels_last),
            grad_clip_norm=cfg.trainer.grad_clip_norm,
            log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        ),
        scaler=torch.amp.GradScaler(device.type) if precision.use_scaler else None,
        ema=ema,
        mixup=build_mixup(cfg.augment, len(CLASSES)),
    )


def synthetic_batch(batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking random images and labels on the CPU (like a loader's output)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    return images, torch.randint(0, len(CLASSES), (batch_size,), generator=g)


def step_breakdown(
    parts: TrainParts, batch: tuple[torch.Tensor, torch.Tensor], warmup: int, repeats: int
) -> dict[str, Any]:
    """Median seconds of forward(+loss), backward, optimizer (clip + step) and EMA update,
    with a device sync after each phase; the first step (compilation, kernel selection) apart."""
    p, ctx = parts, parts.ctx
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
        p.optimizer.zero_grad(set_to_none=True)
        if p.scaler is not None:
            p.scaler.scale(loss).backward()
            p.scaler.unscale_(p.optimizer)
        else:
            loss.backward()
        sync(device)
        t2 = time.perf_counter()
        if ctx.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), ctx.grad_clip_norm)
        if p.scaler is not None:
            p.scaler.step(p.optimizer)
            p.scaler.update()
        else:
            p.optimizer.step()
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
    parts: TrainParts, batches: Callable[[], Iterable], warmup: int, timed: int
) -> dict[str, Any]:
    """Images per second of the trainer's ``train_one_epoch`` over ``timed`` batches (after
    ``warmup``), data loading included: the time a real epoch takes per image.

    ``cpu_ms_per_image``: CPU time of this process (all its threads; DataLoader workers not
    included) per image.
    """
    p = parts
    source = _CountedBatches(lambda: iter(batches()), warmup, timed, p.ctx.device)
    train_one_epoch(
        p.train_model,
        source,
        p.criterion,
        p.optimizer,
        p.scheduler,
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
