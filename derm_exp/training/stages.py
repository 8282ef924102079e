"""Training stages and their optimizers: a head-only stage on a frozen backbone
(``trainer.freeze_backbone_epochs``), then all layers (at ``trainer.finetune_lr`` when set).

Each stage has its own optimizer and an LR schedule over the stage's own epochs. A resumed run
rebuilds them, loads the saved optimizer state and fast-forwards the schedule to the update
where the run stopped, so it continues exactly (see :class:`StageOptimizers`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from derm_exp.training.schedulers import BatchScheduler, build_scheduler

log = logging.getLogger(__name__)
HEAD_ONLY, ALL_LAYERS = 1, 2


def stage_bounds(cfg: DictConfig, stage: int, last: int | None = None) -> tuple[int, int]:
    """First and one-past-last epoch (0-based) of ``stage``; the run ends at ``last`` (the
    schedule fitted to the time budget) or else at ``trainer.max_epochs``."""
    freeze = int(cfg.trainer.freeze_backbone_epochs)
    end = int(cfg.trainer.max_epochs) if last is None else last
    return (0, freeze) if stage == HEAD_ONLY else (freeze, end)


def stage_of(cfg: DictConfig, epoch: int) -> int:
    """The stage that 0-based ``epoch`` belongs to."""
    return HEAD_ONLY if epoch < int(cfg.trainer.freeze_backbone_epochs) else ALL_LAYERS


def stage_lr(cfg: DictConfig, stage: int) -> float:
    """The base LR of ``stage``: ``trainer.finetune_lr`` for the all-layers stage after a frozen
    one (when set), else ``optimizer.lr``."""
    t = cfg.trainer
    if stage == ALL_LAYERS and t.freeze_backbone_epochs and t.finetune_lr is not None:
        return float(t.finetune_lr)
    return float(cfg.optimizer.lr)


def make_optimizer(
    cfg: DictConfig, model: torch.nn.Module, stage: int, steps: int, last: int | None = None
) -> tuple[torch.optim.Optimizer, BatchScheduler]:
    """The optimizer and schedule of ``stage`` (``steps`` updates an epoch, the run ending at
    ``last``); freezes the backbone for the head-only stage and unfreezes it otherwise."""
    model.freeze_backbone(stage == HEAD_ONLY)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(cfg.optimizer, lr=stage_lr(cfg, stage))(params)
    return optimizer, stage_scheduler(cfg, optimizer, stage, steps, last)


def stage_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, stage: int, steps: int, last: int | None
) -> BatchScheduler:
    """The LR schedule of ``stage``: planned over its epochs up to ``trainer.max_epochs``, and
    compressed in time to end at ``last`` when the time budget fitted it shorter."""
    start, end = stage_bounds(cfg, stage, last)
    planned = stage_bounds(cfg, stage)[1] - start
    return build_scheduler(cfg.scheduler, optimizer, end - start, steps, planned_epochs=planned)


@dataclass
class StageStep:
    """What an epoch trains with: its stage's optimizer and schedule, and the number of the
    epoch's first update within the stage (the schedule's position)."""

    stage: int
    optimizer: torch.optim.Optimizer
    scheduler: BatchScheduler
    first_update: int


class StageOptimizers:
    """The optimizer and schedule for each epoch, rebuilt when a stage starts.

    ``resume`` is the saved state of an interrupted run (``stage`` and ``optimizer`` of a
    ``checkpoint_latest.pt``) and ``start_epoch`` the epoch it continues with: when that epoch is
    in the saved stage, the optimizer state is loaded and the schedule fast-forwarded. ``last``
    is the end of a schedule fitted to the time budget (:meth:`fit_to`), None for
    ``trainer.max_epochs``.
    """

    def __init__(
        self,
        cfg: DictConfig,
        model: torch.nn.Module,
        steps: int,
        start_epoch: int = 0,
        resume: Mapping[str, Any] | None = None,
        last: int | None = None,
    ) -> None:
        self.cfg, self.model, self.steps = cfg, model, steps
        self.start_epoch, self.resume, self.last = start_epoch, resume, last
        self.current: StageStep | None = None

    def for_epoch(self, epoch: int) -> StageStep:
        """The stage step of 0-based ``epoch`` (call for consecutive epochs)."""
        stage = stage_of(self.cfg, epoch)
        start = stage_bounds(self.cfg, stage)[0]
        if self.current is None or self.current.stage != stage:
            optimizer, scheduler = make_optimizer(
                self.cfg, self.model, stage, self.steps, self.last
            )
            saved = self.resume
            if saved is not None and saved["stage"] == stage and epoch == self.start_epoch:
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.fast_forward((epoch - start) * self.steps)
            self._log_stage(stage, epoch)
            self.current = StageStep(stage, optimizer, scheduler, 0)
        self.current.first_update = (epoch - start) * self.steps
        return self.current

    def fit_to(self, last: int, done: int) -> None:
        """End the run at epoch ``last`` (fitted to the time budget) after ``done`` epochs: the
        current stage keeps its optimizer and gets the compressed schedule at its position."""
        self.last = last
        step = self.current
        if step is None or stage_bounds(self.cfg, step.stage, last)[1] != last:
            return  # the head-only stage ends where it did; the next stage is built fitted
        start = stage_bounds(self.cfg, step.stage)[0]
        step.scheduler = stage_scheduler(self.cfg, step.optimizer, step.stage, self.steps, last)
        step.scheduler.fast_forward((done - start) * self.steps)

    def _log_stage(self, stage: int, epoch: int) -> None:
        freeze = int(self.cfg.trainer.freeze_backbone_epochs)
        if not freeze:
            return
        lr = stage_lr(self.cfg, stage)
        if stage == HEAD_ONLY:
            log.info(
                "epoch %d: backbone frozen through epoch %d, training the head only (lr %g)",
                epoch + 1,
                freeze,
                lr,
            )
        else:
            log.info("epoch %d: backbone unfrozen, fine-tuning all layers (lr %g)", epoch + 1, lr)
