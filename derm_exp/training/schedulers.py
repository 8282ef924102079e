"""Learning-rate schedules stepped once per optimizer update (timm and torch schedulers)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from omegaconf import DictConfig
from timm.scheduler import CosineLRScheduler

SCHEDULERS = ("cosine_warmup", "cosine", "onecycle", "none")
# Cosine schedules: scheduler.name equals the option (conf/scheduler/<name>.yaml); checkpoints of
# runs made before the rename store "cosine_restarts" for cosine_warmup, and resume reads them.
_COSINE = {"cosine_warmup", "cosine", "cosine_restarts"}


class BatchScheduler:
    """One interface over timm's (stateless in the step) and torch's (stateful) schedulers."""

    def __init__(self, name: str, impl: Any | None) -> None:
        self.name = name
        self.impl = impl

    def step(self, update: int) -> None:
        """Set the LR for optimizer update number ``update`` (0-based, counted within a stage).

        Called before each update's optimizer step. A torch scheduler holds its position
        (``last_epoch``, 0 = the LR it set at construction): it is advanced to ``update``, so
        update 0 uses the schedule's first value and the step comes after ``optimizer.step()``.
        """
        if isinstance(self.impl, CosineLRScheduler):
            self.impl.step_update(num_updates=update)
        elif self.impl is not None:
            while self.impl.last_epoch < update:
                self.impl.step()

    def fast_forward(self, updates: int) -> None:
        """Advance a fresh scheduler to update ``updates`` (resume): the LR is a function of the
        count, so a rebuilt schedule moved on ``updates`` steps equals the interrupted one.

        Schedules are rebuilt rather than restored, so a resumed run with a new
        ``trainer.max_epochs`` follows the schedule for its new length.
        """
        with warnings.catch_warnings():
            # No optimizer step happens while catching up; torch would warn that the order of
            # optimizer.step() and scheduler.step() is reversed, which it is not in training.
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.step(updates)


def build_scheduler(
    cfg: DictConfig,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    planned_epochs: int | None = None,
) -> BatchScheduler:
    """Build the ``scheduler`` group option for ``epochs`` x ``steps_per_epoch`` updates.

    ``planned_epochs`` (more than ``epochs``): the length the schedule was configured for; the
    schedule is compressed in time to ``epochs`` (the cycles after the warm-up scaled by one
    factor), as :mod:`.budget_fit` asks when the time budget allows fewer epochs. Schedules
    defined by the run's length (one cosine, one-cycle) fit any length by construction.
    """
    total = max(1, epochs * steps_per_epoch)
    name = cfg.name
    if name in _COSINE:
        # The warm-up comes first and ends at optimizer.lr (warmup_prefix); the cosine cycles
        # span the updates after it. Without the prefix, timm's warm-up replaces the start of
        # the cosine and the LR drops at its end (to half of optimizer.lr in a 2-epoch run).
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        remaining = max(1, total - warmup)
        span = 1.0
        if planned_epochs is not None and planned_epochs > epochs:
            span = remaining / max(1, planned_epochs * steps_per_epoch - warmup)
        cycle: float = remaining
        if cfg.cycle_epochs is not None:
            cycle = max(1, int(cfg.cycle_epochs * steps_per_epoch))
            if span < 1.0:
                # Kept fractional (timm's cosine accepts a float length), so the compressed
                # cycles add up to the fitted run exactly instead of restarting just before
                # its end after rounding down.
                cycle = max(1.0, cfg.cycle_epochs * steps_per_epoch * span)
        impl = CosineLRScheduler(
            optimizer,
            t_initial=cycle,
            lr_min=cfg.min_lr,
            cycle_mul=cfg.cycle_mul,
            cycle_decay=cfg.cycle_decay,
            cycle_limit=1 if cycle >= remaining else 1000,
            warmup_t=warmup,
            warmup_lr_init=cfg.warmup_lr_init,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        impl.step_update(0)
        return BatchScheduler(name, impl)
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        impl = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
        )
        return BatchScheduler(name, impl)
    if name == "none":
        return BatchScheduler(name, None)
    raise ValueError(f"scheduler.name={name!r}: choose one of {', '.join(SCHEDULERS)}")
