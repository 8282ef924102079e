"""Learning-rate schedules stepped once per optimizer update (timm and torch schedulers)."""

from __future__ import annotations

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
        """Set the LR for optimizer update number ``update`` (0-based, counted within a stage)."""
        if isinstance(self.impl, CosineLRScheduler):
            self.impl.step_update(num_updates=update)
        elif self.impl is not None:
            self.impl.step()

    def fast_forward(self, updates: int) -> None:
        """Advance a fresh scheduler to ``updates`` (resume): the LR is a function of the count.

        Schedules are rebuilt rather than restored, so a resumed run with a new
        ``trainer.max_epochs`` follows the schedule for its new length.
        """
        if isinstance(self.impl, torch.optim.lr_scheduler.OneCycleLR):
            for _ in range(updates):
                self.impl.step()


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> BatchScheduler:
    """Build the ``scheduler`` group option for ``epochs`` x ``steps_per_epoch`` updates."""
    total = max(1, epochs * steps_per_epoch)
    name = cfg.name
    if name in _COSINE:
        cycle = (
            total if cfg.cycle_epochs is None else max(1, int(cfg.cycle_epochs * steps_per_epoch))
        )
        impl = CosineLRScheduler(
            optimizer,
            t_initial=cycle,
            lr_min=cfg.min_lr,
            cycle_mul=cfg.cycle_mul,
            cycle_decay=cfg.cycle_decay,
            cycle_limit=1 if cycle >= total else 1000,
            warmup_t=int(cfg.warmup_epochs * steps_per_epoch),
            warmup_lr_init=cfg.warmup_lr_init,
            t_in_epochs=False,
        )
        impl.step_update(0)
        return BatchScheduler(name, impl)
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        impl = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total + 1,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
        )
        return BatchScheduler(name, impl)
    if name == "none":
        return BatchScheduler(name, None)
    raise ValueError(f"scheduler.name={name!r}: choose one of {', '.join(SCHEDULERS)}")
