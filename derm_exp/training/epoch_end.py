"""What rank 0 does after each epoch: record the metrics, write the checkpoints, log a line,
and decide whether training stops (epoch-end hooks, early stopping, the time budget).

Split out of :mod:`.trainer` (whose :func:`~.trainer.train_epochs` calls these in order) so
that under DDP the rank-0-only work is one block the other ranks skip.
"""

from __future__ import annotations

import logging
import time

import mlflow
from omegaconf import DictConfig

from derm_exp.models.checkpoint import save_checkpoint
from derm_exp.training import distributed
from derm_exp.training.budget_fit import epochs_to_run
from derm_exp.training.data_setup import skipped_images
from derm_exp.training.hooks import TrialPruned, run_epoch_end_hooks
from derm_exp.training.rng import rng_state
from derm_exp.training.run_parts import Run, RunState
from derm_exp.training.selection import Score, is_better
from derm_exp.training.stages import StageStep

log = logging.getLogger("derm_exp.training.trainer")  # the epoch lines keep their logger name


def end_of_epoch(
    cfg: DictConfig, state: RunState, epoch: int, row: dict[str, float]
) -> str | TrialPruned | None:
    """Rank 0's decision after an epoch: None (go on), why training stops, or the hook's
    :class:`TrialPruned` (re-raised once every rank knows)."""
    try:
        run_epoch_end_hooks(epoch + 1, row)
    except TrialPruned as exc:
        return exc
    return should_stop(cfg, state, epoch)


def record_epoch(run: Run, state: RunState, epoch: int, row: dict[str, float]) -> None:
    """Log the epoch's metrics to MLflow and append them to the history."""
    skipped = float(len(skipped_images(run.loaders)))
    mlflow.log_metrics({**row, "data/skipped_images": skipped}, step=epoch + 1)
    for k, v in row.items():
        state.history[k].append(float(v))
    state.history["epoch"].append(float(epoch + 1))


def save_best(run: Run, state: RunState, epoch: int, chosen: Score) -> bool:
    """Write ``checkpoint_best.pt`` when ``chosen`` beats the best so far; count stale epochs."""
    if not is_better(chosen, state.best, run.cfg.trainer.monitor_mode):
        state.stale_epochs += 1
        return False
    state.best, state.stale_epochs = chosen, 0
    p = run.parts
    weights = p.ema.module if chosen.weights == "ema" else p.model
    best = {"model": weights.state_dict(), "weights": chosen.weights, "epoch": epoch}
    save_checkpoint({**run.meta, "kind": "best", **best, "best": chosen.as_dict()}, run.paths.best)
    return True


def save_latest(run: Run, state: RunState, epoch: int, step: StageStep) -> None:
    """Write ``checkpoint_latest.pt``: everything needed to resume after this epoch."""
    p = run.parts
    latest = {
        "kind": "latest",
        "model": p.model.state_dict(),
        "ema": p.ema.state_dict() if p.ema else None,
        "optimizer": step.optimizer.state_dict(),
        "scaler": p.scaler.state_dict() if p.scaler else None,
        "stage": step.stage,
        "epoch": epoch,
        "best": state.best.as_dict(),
        "stale_epochs": state.stale_epochs,
        "elapsed": state.elapsed,
        "history": dict(state.history),
        "rng": rng_state(),
        "world_size": distributed.world_size(),  # the data order depends on it
        "fitted_schedule": state.fitted.as_dict() if state.fitted else None,
    }
    save_checkpoint({**run.meta, **latest}, run.paths.latest)


def log_epoch(
    epoch: int,
    total: int,
    train: dict[str, float],
    metrics: dict[str, float],
    weights: str,
    improved: bool,
    started: float,
) -> None:
    auc = metrics.get("val/macro_auc")
    log.info(
        "epoch %d/%d  train loss %.4f acc %.3f | val loss %.4f bal.acc %.3f macro-F1 %.3f "
        "AUC %s [%s]%s  %.0fs",
        epoch + 1,
        total,
        train["loss"],
        train["accuracy"],
        metrics["val/loss"],
        metrics["val/balanced_accuracy"],
        metrics["val/macro_f1"],
        "n/a" if auc is None else f"{auc:.3f}",
        weights,
        "  *best*" if improved else "",
        time.monotonic() - started,
    )


def should_stop(cfg: DictConfig, state: RunState, epoch: int) -> str | None:
    """Early stopping (``trainer.early_stopping_patience``) or the time budget: the next epoch,
    at the mean epoch time so far, would end past ``trainer.max_time_minutes``. Neither after
    the run's last epoch (``trainer.max_epochs`` or the fitted length), which ends it anyway."""
    trainer = cfg.trainer
    if state.epoch >= epochs_to_run(cfg, state.fitted):
        return None
    if state.stale_epochs >= int(trainer.early_stopping_patience):
        log.info(
            "early stopping: %s has not improved for %d epochs", trainer.monitor, state.stale_epochs
        )
        return "early_stopping"
    budget = trainer.max_time_minutes * 60 if trainer.max_time_minutes else None
    if budget is not None and state.elapsed + state.elapsed / state.epoch > budget:
        log.info("time budget of %.1f min reached after epoch %d", budget / 60, epoch + 1)
        mlflow.set_tag("derm_exp.stopped_by", "time_budget")
        return "time_budget"
    return None
