"""The training run: set up -> epoch loop -> final report -> registration, tracked in MLflow.

Read top to bottom: :func:`fit` names the steps; the helpers below it follow in that order,
each doing one thing. :func:`build_parts` (model on its device, loss with class weights, EMA,
mixup, step context) is also what ``derm_exp.benchmark`` times. Plain function of a config, so
tests call it without Hydra.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3

from derm_exp.data.metadata import CLASSES
from derm_exp.data.sampling import epoch_seed
from derm_exp.data.splits import save_splits
from derm_exp.models.checkpoint import checkpoint_meta, copy_checkpoint
from derm_exp.models.classifier import build_model
from derm_exp.runtime import Precision, resolve_device, resolve_precision, seed_everything
from derm_exp.tracking.choices import config_choices
from derm_exp.tracking.mlflow_run import redact_config, run_url_hint, setup_experiment
from derm_exp.training import distributed, epoch_end
from derm_exp.training import resume as resume_mod
from derm_exp.training.budget_fit import epochs_to_run, fit_on_every_rank
from derm_exp.training.data_setup import (
    build_loaders,
    data_fingerprint,
    fit_metadata_encoder,
    split_frame,
)
from derm_exp.training.epoch_validation import validate_epoch
from derm_exp.training.final_report import final_report, report_skipped_images
from derm_exp.training.hooks import TrialPruned
from derm_exp.training.loop import (
    StepContext,
    check_finite_weights,
    compile_for_training,
    optimizer_steps,
    train_one_epoch,
)
from derm_exp.training.losses import build_criterion, loss_class_weights
from derm_exp.training.mixing import build_mixup
from derm_exp.training.registration import register_best_model
from derm_exp.training.rng import set_rng_state
from derm_exp.training.run_parts import Run, RunState, TrainParts, restore_state
from derm_exp.training.run_tracking import CheckpointPaths, log_run_start, open_run, run_outcome
from derm_exp.training.stages import StageOptimizers, StageStep
from derm_exp.training.validate import validate_config, validate_model

log = logging.getLogger(__name__)


def fit(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | None = None) -> float:
    """Train as configured, log to MLflow, and return the best validation ``cfg.objective``.

    Under DDP (see :mod:`.distributed`) every rank trains; rank 0 alone touches the tracking
    store and writes outputs, and the other ranks return NaN once the epochs are done.
    """
    resumed = None
    if cfg.resume and distributed.is_main():
        resumed = resume_mod.load_for_resume(cfg, overrides or [])
    resumed = resume_mod.share_across_ranks(resumed)
    if resumed is not None:
        cfg = resumed.config
    validate_config(cfg)  # every setting, before any work
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    device = distributed.local_device(resolve_device(cfg.device))
    precision = resolve_precision(cfg.trainer.amp, device)
    t = cfg.tracking
    experiment_id = None
    done = None
    if distributed.is_main():
        experiment_id = setup_experiment(t.uri, t.experiment_name, t.artifact_root)
        if resumed is not None:  # a FINISHED run is not trained again
            done = resume_mod.finish_if_done(cfg, resumed)
    done = distributed.broadcast(done)
    if done is not None:
        return done

    if resumed is not None:
        _warn_if_world_size_changed(resumed.checkpoint)
    run = set_up_run(cfg, Path(output_dir), resumed, device, precision)
    state = restore_state(cfg, run.parts, resumed.checkpoint) if resumed else RunState()
    if not distributed.is_main():
        with _peer_failures(None, run.paths):
            train_epochs(run, state)
        return math.nan  # rank 0 evaluates, reports and returns the objective
    run_id = open_run(cfg, experiment_id, run.meta["choices"], resumed.run_id if resumed else None)
    with run_outcome(cfg, run_id, run.paths) as outcome, _peer_failures(run_id, run.paths):
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
        if distributed.is_distributed():
            world = distributed.world_size()
            mlflow.set_tags(
                {
                    "derm_exp.ddp_world_size": world,
                    "derm_exp.global_batch_size": int(cfg.data.batch_size)
                    * world
                    * accumulation(cfg),
                }
            )
        train_epochs(run, state)
        result = evaluate_best(run, state)
        if cfg.registry.enabled:
            register_best_model(cfg, run_id, run.paths.best, history=state.history)
        outcome.status = "FINISHED"
        _print_summary(cfg, run_id, state, result)
        return resume_mod.best_objective(state.history, state.best.epoch, str(cfg.objective))


@contextlib.contextmanager
def _peer_failures(run_id: str | None, paths: CheckpointPaths) -> Iterator[None]:
    """Under DDP, a failed collective or torchrun's SIGTERM becomes one
    :class:`~.distributed.PeerFailure` that names the run (marked FAILED by ``run_outcome``
    around it, so it can be resumed) and how to continue it."""
    try:
        yield
    except RuntimeError as exc:
        failure = distributed.as_peer_failure(exc)
        if failure is None:
            raise
        # This process is on its way out; torchrun's SIGTERM, sent a moment after a peer's
        # death, must not interrupt marking the run or printing the one error line.
        distributed.defer_stops()
        if run_id is None:  # a non-zero rank: rank 0 reports
            raise failure from None
        where = "No epoch had completed: nothing to resume, rerun once fixed."
        if paths.latest.is_file():
            where = (
                f"Training state is safe: last good checkpoint {paths.latest}. Continue with: "
                f"{distributed.train_command()} resume={run_id}"
            )
        raise distributed.PeerFailure(
            f"{failure}; MLflow run {run_id} marked FAILED. {where}"
        ) from None


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
    main = distributed.is_main()
    with distributed.main_first():  # rank 0 creates the demo data and image cache alone
        frame = split_frame(cfg.data)
    fingerprint = data_fingerprint(frame)
    if resumed is not None:
        resume_mod.check_same_data(resumed, fingerprint)
    split_paths = save_splits(frame, output_dir / "splits") if main else []
    encoder = fit_metadata_encoder(frame, cfg.model)
    model = build_model(
        cfg.model,
        num_classes=len(CLASSES),
        image_size=cfg.data.image_size,
        metadata_encoder=encoder,
    )
    validate_model(cfg, model)
    with distributed.main_first():
        loaders = build_loaders(
            frame,
            cfg.data,
            cfg.augment,
            model.data_config,
            device,
            distributed.rank(),
            distributed.world_size(),
            encoder,
        )
    parts = build_parts(cfg, model, loaders.train_labels, device, precision)
    paths = CheckpointPaths.in_folder(output_dir)
    if resumed is not None and main:
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
        metadata_encoding=encoder.to_dict() if encoder is not None else None,
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
    if distributed.is_distributed() and cfg.trainer.get("sync_batchnorm", False):
        if device.type == "cuda":
            # In place for the BatchNorm children; the top module stays the same object.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif distributed.is_main():
            log.warning("trainer.sync_batchnorm needs CUDA (torch's SyncBatchNorm): ignored")
    ema = None
    if cfg.trainer.ema.enabled:
        ema = ModelEmaV3(model, decay=cfg.trainer.ema.decay, use_warmup=cfg.trainer.ema.warmup)
    ctx = StepContext(
        device=device,
        precision=precision,
        channels_last=bool(cfg.trainer.channels_last),
        grad_clip_norm=cfg.trainer.grad_clip_norm,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps),
        accumulate_grad_batches=accumulation(cfg),
    )
    return TrainParts(
        model=model,
        train_model=_training_module(cfg, model, device),
        criterion=criterion,
        mixup=build_mixup(cfg.augment, len(CLASSES)),
        ema=ema,
        ctx=ctx,
        scaler=torch.amp.GradScaler(device.type) if precision.use_scaler else None,
    )


def accumulation(cfg: DictConfig) -> int:
    """``trainer.accumulate_grad_batches`` (1 for checkpoints of runs made before it existed)."""
    return int(cfg.trainer.get("accumulate_grad_batches") or 1)


def _training_module(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device
) -> torch.nn.Module:
    """The module the training steps run: ``model`` in DDP when distributed, then compiled when
    ``trainer.compile`` asks (DDP first, as torch recommends)."""
    wrapped = distributed.wrap_ddp(model, device)
    return compile_for_training(wrapped, cfg.trainer.get("compile", False))


def _warn_if_world_size_changed(checkpoint: dict) -> None:
    saved, now = int(checkpoint.get("world_size", 1)), distributed.world_size()
    if saved != now and distributed.is_main():
        log.warning(
            "resuming a run trained with %d process(es) on %d: the weights, optimizer and "
            "schedule continue, but each epoch's data order (and the global batch) changes, so "
            "the run is not an exact continuation",
            saved,
            now,
        )


# --- epoch loop -------------------------------------------------------------------------------


def train_epochs(run: Run, state: RunState) -> None:
    """Train, validate (raw and EMA weights), record and checkpoint each epoch until the last,
    early stopping or the time budget; a resumed run continues exactly where it stopped.

    Under DDP every rank trains and validates its shard; rank 0 records, checkpoints and takes
    the decision to stop (early stopping, time budget, pruning), which every rank follows.
    """
    cfg, parts = run.cfg, run.parts
    resume = run.resumed.checkpoint if run.resumed is not None else None
    updates = optimizer_steps(len(run.loaders.train), accumulation(cfg))  # per epoch
    last = state.fitted.epochs if state.fitted else None
    optimizers = StageOptimizers(cfg, parts.model, updates, state.epoch, resume, last)
    if resume is not None:
        set_rng_state(resume["rng"])
    trainable = _trainable(parts.model)
    for epoch in itertools.count(state.epoch):
        if epoch >= epochs_to_run(cfg, state.fitted):
            break
        started = time.monotonic()
        step = optimizers.for_epoch(epoch)
        if distributed.is_distributed() and _trainable(parts.model) != trainable:
            # DDP reduces the parameters that required gradients when it was built.
            trainable = _trainable(parts.model)
            parts.train_model = _training_module(cfg, parts.model, parts.ctx.device)
        train = _train_one_epoch(run, step, epoch, epochs_to_run(cfg, state.fitted))
        chosen, metrics = validate_epoch(cfg, parts.model, parts.ema, run.loaders, parts.ctx, epoch)
        lr = step.optimizer.param_groups[0]["lr"]
        row = {"train/loss": train["loss"], "train/accuracy": train["accuracy"], "lr": lr}
        row.update(metrics)
        state.epoch = epoch + 1
        state.elapsed += time.monotonic() - started
        if state.epoch == 1:  # the first epoch of a fresh run
            state.fitted = fit_on_every_rank(cfg, state.elapsed, optimizers)
        decision = None
        if distributed.is_main():
            epoch_end.record_epoch(run, state, epoch, row)
            improved = epoch_end.save_best(run, state, epoch, chosen)
            epoch_end.save_latest(run, state, epoch, step)
            total = epochs_to_run(cfg, state.fitted)
            epoch_end.log_epoch(epoch, total, train, metrics, chosen.weights, improved, started)
            decision = epoch_end.end_of_epoch(cfg, state, epoch, row)
        decision = distributed.broadcast(decision)
        if isinstance(decision, TrialPruned):
            if distributed.is_main():
                raise decision
            return
        if decision is not None:
            break


def _trainable(model: torch.nn.Module) -> tuple[bool, ...]:
    return tuple(p.requires_grad for p in model.parameters())


def _train_one_epoch(run: Run, step: StageStep, epoch: int, total: int) -> dict[str, float]:
    """One pass over the training split; the weights must stay finite."""
    cfg, p = run.cfg, run.parts
    # Reseed per epoch: an epoch's order and augmentation do not depend on earlier epochs.
    # Every DDP rank draws the same global order and trains on its slice of it.
    run.loaders.generator.manual_seed(epoch_seed(int(cfg.seed), epoch))
    # Augmentation and mixup/cutmix draw their own stream on each rank (rank 0's = one process's).
    torch.manual_seed(int(cfg.seed) * 7_919 + epoch + 1_000_003 * distributed.rank())
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
        desc=f"epoch {epoch + 1}/{total}",
    )
    # Under DDP every rank validates rank 0's weights (BatchNorm statistics drift per rank).
    distributed.sync_from_main(p.model)
    if p.ema is not None:
        distributed.sync_from_main(p.ema.module)
    check_finite_weights(p.model, epoch + 1)  # never score or save NaN weights
    return train


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
    local = not str(cfg.tracking.uri).startswith(("http://", "https://"))
    hint = "  (start the UI with `make ui`)" if local else ""  # a server serves its own UI
    print(f"\nMLflow run id: {run_id}\n  {run_url_hint(run_id)}{hint}")
    print(
        f"  best {cfg.trainer.monitor} = {state.best.value:.4f} "
        f"(epoch {state.best.epoch + 1}, {state.best.weights} weights); "
        f"test balanced accuracy = {result['balanced_accuracy']:.4f}"
    )
