"""``trainer.fit_schedule_to_budget``: fit the LR schedule to the epochs the time budget allows.

A preset with a time budget (``trainer.max_time_minutes``) and a schedule of fixed length
(``trainer.max_epochs``, cosine cycles of ``scheduler.cycle_epochs``) is tuned on one machine. On
a slower one the budget stops the run part-way through a cycle, so the model it keeps is the
end of an earlier, shorter cycle. With the option on, the first epoch's time says how many
epochs fit; when fewer than ``trainer.max_epochs`` do, the schedule is compressed in time (every
cycle scaled by one factor; the warm-up kept), so its shape is the planned one and its last
cycle ends with the last epoch that fits.

Decided once, on rank 0, after the first epoch of a fresh run; saved in ``checkpoint_latest.pt``
and reused when the run resumes, unless the resume changes ``trainer.max_epochs`` or the budget
(then the schedule follows the new limits, as a resumed run's schedule always does).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import mlflow
from omegaconf import DictConfig

from derm_exp.training import distributed

if TYPE_CHECKING:
    from derm_exp.training.stages import StageOptimizers

log = logging.getLogger(__name__)
# Epoch times vary by a few per cent from epoch to epoch: fitting to 97 % of the budget leaves
# room for that, so the last fitted epoch still starts before the budget stops the run.
_MARGIN = 0.97


@dataclass(frozen=True)
class FittedSchedule:
    """The compressed schedule's length and the limits it was fitted under."""

    epochs: int  # epochs the schedule spans now (fewer than max_epochs)
    max_epochs: int  # trainer.max_epochs when fitted
    max_time_minutes: float  # trainer.max_time_minutes when fitted

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_schedule(cfg: DictConfig, epochs_done: int, elapsed_s: float) -> FittedSchedule | None:
    """The fitted schedule after the first epoch (``epochs_done == 1``, ``elapsed_s`` seconds),
    or None: not asked, no budget, not the first epoch, or all ``trainer.max_epochs`` fit."""
    t = cfg.trainer
    if not t.get("fit_schedule_to_budget", False) or not t.max_time_minutes or epochs_done != 1:
        return None
    budget_s, max_epochs = float(t.max_time_minutes) * 60, int(t.max_epochs)
    fit = int(_MARGIN * budget_s / max(elapsed_s, 1e-9))
    # At least one all-layers epoch after the head-only stage, and one after this epoch.
    fit = max(fit, int(t.freeze_backbone_epochs) + 1, epochs_done + 1)
    if fit >= max_epochs:
        return None
    log.info(
        "time budget: epoch 1 took %.0f s, so %d of trainer.max_epochs=%d epochs fit in "
        "trainer.max_time_minutes=%g; the LR schedule is compressed to them "
        "(trainer.fit_schedule_to_budget)",
        elapsed_s,
        fit,
        max_epochs,
        float(t.max_time_minutes),
    )
    return FittedSchedule(fit, max_epochs, float(t.max_time_minutes))


def fit_on_every_rank(
    cfg: DictConfig, elapsed_s: float, optimizers: StageOptimizers
) -> FittedSchedule | None:
    """After the first epoch (``elapsed_s`` seconds): the schedule fitted as rank 0 measured
    it, applied to ``optimizers`` on every rank and tagged on the run; None when not fitted."""
    fitted = fit_schedule(cfg, 1, elapsed_s) if distributed.is_main() else None
    fitted = distributed.broadcast(fitted)
    if fitted is not None:
        optimizers.fit_to(fitted.epochs, 1)
        if distributed.is_main():
            mlflow.set_tag("derm_exp.fitted_epochs", str(fitted.epochs))
    return fitted


def restore_fitted(cfg: DictConfig, saved: dict[str, Any] | None) -> FittedSchedule | None:
    """A checkpoint's fitted schedule, when ``cfg`` keeps the limits it was fitted under."""
    if not saved:
        return None
    fitted = FittedSchedule(
        int(saved["epochs"]), int(saved["max_epochs"]), float(saved["max_time_minutes"])
    )
    t = cfg.trainer
    budget = None if t.max_time_minutes is None else float(t.max_time_minutes)
    if (int(t.max_epochs), budget) != (fitted.max_epochs, fitted.max_time_minutes):
        log.info(
            "resume changes trainer.max_epochs or trainer.max_time_minutes: the LR schedule "
            "fitted to %d epochs is dropped and follows the new limits",
            fitted.epochs,
        )
        return None
    return fitted


def epochs_to_run(cfg: DictConfig, fitted: FittedSchedule | None) -> int:
    """The epoch the run ends at: the fitted length, else ``trainer.max_epochs``."""
    return fitted.epochs if fitted is not None else int(cfg.trainer.max_epochs)
