"""The training run: set up -> epoch loop -> final report -> registration, tracked in MLflow.

Read top to bottom: :func:`fit` names the steps; the helpers below it follow in that order,
each doing one thing. :func:`build_parts` (model on its device, loss with class weights, EMA,
mixup, step context) is also what ``derm_exp.benchmark`` times. Plain function of a config, so
tests call it without Hydra.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3

from derm_exp.data.metadata import CLASSES
from derm_exp.data.splits import save_splits
from derm_exp.models.checkpoint import checkpoint_meta, copy_checkpoint, save_checkpoint
from derm_exp.models.classifier import build_model
from derm_exp.runtime import Precision, resolve_device, resolve_precision, seed_everything
from derm_exp.tracking.choices import config_choices
from derm_exp.tracking.mlflow_run import redact_config, run_url_hint, setup_experiment
from derm_exp.training import resume as resume_mod
from derm_exp.training.data_setup import (
    Loaders,
    build_loaders,
    data_fingerprint,
    skipped_images,
    split_frame,
)
from derm_exp.training.epoch_validation import validate_epoch
from derm_exp.training.final_report import final_report, report_skipped_images
from derm_exp.training.hooks import run_epoch_end_hooks
from derm_exp.training.loop import (
    StepContext,
    check_finite_weights,
    compile_for_training,
    train_one_epoch,
)
from derm_exp.training.losses import build_criterion, loss_class_weights
from derm_exp.training.mixing import build_mixup
from derm_exp.training.registration import register_best_model
from derm_exp.training.rng import rng_state, set_rng_state
from derm_exp.training.run_tracking import CheckpointPaths, log_run_start, open_run, run_outcome
from derm_exp.training.selection import Score, is_better
from derm_exp.training.stages import StageOptimizers, StageStep
from derm_exp.training.validate import validate_config, validate_model

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything that changes from epoch to epoch (and is restored on resume)."""

    epoch: int = 0  # next epoch to run (0-based)
    best: Score | None = None
    stale_epochs: int = 0
    elapsed: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


@dataclass
class TrainParts:
    """What the epochs train with, as :func:`build_parts` sets it up."""

    model: torch.nn.Module  # the weights that are trained, validated and saved
    train_model: torch.nn.Module  # the same module, torch.compile'd when trainer.compile asks
    criterion: torch.nn.Module
    mixup: Callable | None
    ema: ModelEmaV3 | None
    ctx: StepContext
    scaler: torch.amp.GradScaler | None


@dataclass
class Run:
    """A run's fixed parts, set up once by :func:`set_up_run` and shared by the steps."""

    cfg: DictConfig
    output_dir: Path
    loaders: Loaders
    parts: TrainParts
    meta: dict  # checkpoint metadata (checkpoint_meta); its run_id is set once the run is open
    paths: CheckpointPaths
    split_paths: list[Path]
    resumed: resume_mod.Resumed | None


def fit(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | None = None) -> float:
    """Train as configured, log to MLflow, and return the best validation ``cfg.objective``."""
    resumed = resume_mod.load_for_resume(cfg, overrides or []) if cfg.resume else None
    if resumed is not None:
        cfg = resumed.config
    validate_config(cfg)  # every setting, before any work
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.trainer.amp, device)
    t = cfg.tracking
    experiment_id = setup_experiment(t.uri, t.experiment_name, t.artifact_root)
    if resumed is not None:
        done = resume_mod.finish_if_done(cfg, resumed)  # a FINISHED run is not trained again
        if done is not None:
            return done

    run = set_up_run(cfg, Path(output_dir), resumed, device, precision)
    state = restore_state(run.parts, resumed.checkpoint) if resumed else RunState()
    run_id = open_run(cfg, experiment_id, run.meta["choices"], resumed.run_id if resumed else None)
    with run_outcome(cfg, run_id, run.paths) as outcome:
        run.meta["run_id"] = run_id
        log_run_start(
            cfg,
            run_id,
            run.meta,
            run.split_paths,
            run.output_dir,
            resumed=resumed is not None,
            start_epoch=state.epoch,
        )
        train_epochs(run, state)
        result = evaluate_best(run, state)
        if cfg.registry.enabled:
            register_best_model(cfg, run_id, run.paths.best, history=state.history)
        outcome.status = "FINISHED"
        _print_summary(cfg, run_id, state, result)
        return resume_mod.best_objective(state.history, state.best.epoch, str(cfg.objective))


# --- setup ------------------------------------------------------------------------------------


def set_up_run(
    cfg: DictConfig,
    output_dir: Path,
    resumed: resume_mod.Resumed | None,
    device: torch.device,
    precision: Precision,
) -> Run:
    """Split the data (saved as CSVs), build the model, loaders and training parts, and the
    checkpoint metadata; a resumed run's checkpoints are copied into the new output folder."""
    frame = split_frame(cfg.data)
    fingerprint = data_fingerprint(frame)
    if resumed is not None:
        resume_mod.check_same_data(resumed, fingerprint)
    split_paths = save_splits(frame, output_dir / "splits")
    model = build_model(cfg.model, num_classes=len(CLASSES), image_size=cfg.data.image_size)
    validate_model(cfg, model)
    loaders = build_loaders(frame, cfg.data, cfg.augment, model.data_config, device)
    parts = build_parts(cfg, model, loaders.train_labels, device, precision)
    paths = CheckpointPaths.in_folder(output_dir)
    if resumed is not None:
        # The new output folder holds the run's whole state from the start: the best weights
        # found before the interruption, and a resumable checkpoint even if no epoch is left.
        for src, dst in ((resumed.checkpoint_path, paths.latest), (resumed.best_path, paths.best)):
            if src is not None:
                copy_checkpoint(src, dst)
    meta = checkpoint_meta(
        config=redact_config(OmegaConf.to_container(cfg, resolve=True)),
        # A resumed run keeps the group options it was started with (see tracking.choices).
        choices=config_choices(cfg, resumed.checkpoint if resumed else None),
        classes=list(CLASSES),
        data_config=model.data_config,
        data_fingerprint=fingerprint,
    )
    return Run(cfg, output_dir, loaders, parts, meta, paths, split_paths, resumed)


def build_parts(
    cfg: DictConfig,
    model: torch.nn.Module,
    train_labels: np.ndarray,
    device: torch.device,
    precision: Precision,
) -> TrainParts:
    """Everything a training step needs around ``model``, set up as a run does: the model on
    ``device`` (channels-last when configured), the loss (with ``loss.class_weights`` from
    ``train_labels``), mixup/cutmix, EMA, the step context, the AMP scaler, and the
    (maybe compiled) module the steps run. Optimizers are per stage: :mod:`.stages`."""
    weights = loss_class_weights(cfg.loss, train_labels)
    criterion = build_criterion(cfg.loss, None if weights is None else weights.to(device))
    model.to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.trainer.ema.enabled:
        ema = ModelEmaV3(model, decay=cfg.trainer.ema.decay, use_warmup=cfg.trainer.ema.warmup)
    ctx = StepContext(
        device=device,
        precision=precision,
        channels_last=bool(cfg.trainer.channels_last),
        grad_clip_norm=cfg.trainer.grad_clip_norm,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
    )
    return TrainParts(
        model=model,
        train_model=compile_for_training(model, cfg.trainer.get("compile", False)),
        criterion=criterion,
        mixup=build_mixup(cfg.augment, len(CLASSES)),
        ema=ema,
        ctx=ctx,
        scaler=torch.amp.GradScaler(device.type) if precision.use_scaler else None,
    )


def restore_state(parts: TrainParts, ck: dict) -> RunState:
    """Load a ``checkpoint_latest.pt``'s weights (raw, EMA, scaler) and its epoch counters."""
    parts.model.load_state_dict(ck["model"])
    if parts.ema is not None and ck.get("ema") is not None:
        parts.ema.load_state_dict(ck["ema"])
    if parts.scaler is not None and ck.get("scaler"):
        parts.scaler.load_state_dict(ck["scaler"])
    return RunState(
        epoch=ck["epoch"] + 1,
        best=Score(**ck["best"]) if ck.get("best") else None,
        stale_epochs=ck["stale_epochs"],
        elapsed=ck["elapsed"],
        history=defaultdict(list, {k: list(v) for k, v in ck["history"].items()}),
    )


# --- epoch loop -------------------------------------------------------------------------------


def train_epochs(run: Run, state: RunState) -> None:
    """Train, validate (raw and EMA weights), record and checkpoint each epoch until the last,
    early stopping or the time budget; a resumed run continues exactly where it stopped."""
    cfg, parts = run.cfg, run.parts
    resume = run.resumed.checkpoint if run.resumed is not None else None
    optimizers = StageOptimizers(cfg, parts.model, len(run.loaders.train), state.epoch, resume)
    if resume is not None:
        set_rng_state(resume["rng"])
    for epoch in range(state.epoch, int(cfg.trainer.max_epochs)):
        started = time.monotonic()
        step = optimizers.for_epoch(epoch)
        train = _train_one_epoch(run, step, epoch)
        chosen, metrics = validate_epoch(cfg, parts.model, parts.ema, run.loaders, parts.ctx, epoch)
        lr = step.optimizer.param_groups[0]["lr"]
        row = {"train/loss": train["loss"], "train/accuracy": train["accuracy"], "lr": lr}
        row.update(metrics)
        _record(run, state, epoch, row)
        improved = _save_best(run, state, epoch, chosen)
        state.epoch = epoch + 1
        state.elapsed += time.monotonic() - started
        _save_latest(run, state, epoch, step)
        _log_epoch(cfg, epoch, train, metrics, chosen.weights, improved, started)
        run_epoch_end_hooks(epoch + 1, row)
        if _should_stop(cfg, state, epoch):
            break


def _train_one_epoch(run: Run, step: StageStep, epoch: int) -> dict[str, float]:
    """One pass over the training split; the weights must stay finite."""
    cfg, p = run.cfg, run.parts
    # Reseed per epoch: an epoch's order and augmentation do not depend on earlier epochs.
    run.loaders.generator.manual_seed(int(cfg.seed) * 100_003 + epoch)
    torch.manual_seed(int(cfg.seed) * 7_919 + epoch)
    train = train_one_epoch(
        p.train_model,
        run.loaders.train,
        p.criterion,
        step.optimizer,
        step.scheduler,
        p.ctx,
        first_update=step.first_update,
        epoch=epoch + 1,
        scaler=p.scaler,
        mixup=p.mixup,
        ema=p.ema,
        desc=f"epoch {epoch + 1}/{cfg.trainer.max_epochs}",
    )
    check_finite_weights(p.model, epoch + 1)  # never score or save NaN weights
    return train


def _record(run: Run, state: RunState, epoch: int, row: dict[str, float]) -> None:
    """Log the epoch's metrics to MLflow and append them to the history."""
    skipped = float(len(skipped_images(run.loaders)))
    mlflow.log_metrics({**row, "data/skipped_images": skipped}, step=epoch + 1)
    for k, v in row.items():
        state.history[k].append(float(v))
    state.history["epoch"].append(float(epoch + 1))


def _save_best(run: Run, state: RunState, epoch: int, chosen: Score) -> bool:
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


def _save_latest(run: Run, state: RunState, epoch: int, step: StageStep) -> None:
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
    }
    save_checkpoint({**run.meta, **latest}, run.paths.latest)


def _log_epoch(
    cfg: DictConfig,
    epoch: int,
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
        int(cfg.trainer.max_epochs),
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


def _should_stop(cfg: DictConfig, state: RunState, epoch: int) -> bool:
    """Early stopping (``trainer.early_stopping_patience``) or the time budget: the next epoch,
    at the mean epoch time so far, would end past ``trainer.max_time_minutes``."""
    trainer = cfg.trainer
    if state.stale_epochs >= int(trainer.early_stopping_patience):
        log.info(
            "early stopping: %s has not improved for %d epochs", trainer.monitor, state.stale_epochs
        )
        return True
    budget = trainer.max_time_minutes * 60 if trainer.max_time_minutes else None
    if budget is not None and state.elapsed + state.elapsed / state.epoch > budget:
        log.info("time budget of %.1f min reached after epoch %d", budget / 60, epoch + 1)
        mlflow.set_tag("derm_exp.stopped_by", "time_budget")
        return True
    return False


# --- final report -----------------------------------------------------------------------------


def evaluate_best(run: Run, state: RunState) -> dict:
    """Log the latest checkpoint, evaluate the best one on the test split (calibrated on
    validation), report skipped images, and log the (calibrated) best checkpoint."""
    mlflow.log_artifact(str(run.paths.latest), "checkpoints")
    p = run.parts
    result = final_report(run.cfg, p.model, run.paths.best, run.loaders, p.ctx, state.history)
    report_skipped_images(run.loaders)
    mlflow.log_artifact(str(run.paths.best), "checkpoints")
    return result


def _print_summary(cfg: DictConfig, run_id: str, state: RunState, result: dict) -> None:
    print(f"\nMLflow run id: {run_id}\n  {run_url_hint(run_id)}  (start the UI with `make ui`)")
    print(
        f"  best {cfg.trainer.monitor} = {state.best.value:.4f} "
        f"(epoch {state.best.epoch + 1}, {state.best.weights} weights); "
        f"test balanced accuracy = {result['balanced_accuracy']:.4f}"
    )
