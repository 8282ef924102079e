"""The training run: data -> model -> epochs -> selection -> final evaluation, tracked in MLflow.

Read top to bottom: :func:`fit` sets up, then loops over epochs; helpers below it each do one
step. Plain function of a config, so tests call it without Hydra.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3

from derm_exp.data.metadata import CLASSES
from derm_exp.data.sampling import class_weights
from derm_exp.data.splits import save_splits
from derm_exp.errors import StorageError
from derm_exp.models.checkpoint import copy_checkpoint, save_checkpoint
from derm_exp.models.classifier import build_model
from derm_exp.runtime import resolve_device, resolve_precision, seed_everything
from derm_exp.tracking.choices import choice_params, config_choices, default_run_name
from derm_exp.tracking.mlflow_run import (
    loggable_params,
    redact_config,
    run_url_hint,
    setup_experiment,
    training_run_tags,
)
from derm_exp.training import resume as resume_mod
from derm_exp.training.data_setup import Loaders, build_loaders, data_fingerprint, split_frame
from derm_exp.training.epoch_validation import validate_epoch
from derm_exp.training.final_report import final_report
from derm_exp.training.hooks import TrialPruned, run_epoch_end_hooks
from derm_exp.training.loop import (
    NonFiniteLossError,
    StepContext,
    check_finite_weights,
    train_one_epoch,
)
from derm_exp.training.losses import build_criterion
from derm_exp.training.mixing import build_mixup
from derm_exp.training.registration import register_best_model
from derm_exp.training.rng import rng_state, set_rng_state
from derm_exp.training.schedulers import BatchScheduler, build_scheduler
from derm_exp.training.selection import Score, is_better
from derm_exp.training.validate import validate_config, validate_model

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "derm_exp.checkpoint/1"


@dataclass
class RunState:
    """Everything that changes from epoch to epoch (and is restored on resume)."""

    epoch: int = 0  # next epoch to run (0-based)
    best: Score | None = None
    stale_epochs: int = 0
    elapsed: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def fit(cfg: DictConfig, output_dir: str | Path, overrides: list[str] | None = None) -> float:
    """Train as configured, log to MLflow, and return the best validation ``cfg.objective``."""
    output_dir = Path(output_dir)
    resumed = resume_mod.load_for_resume(cfg, overrides or []) if cfg.resume else None
    if resumed is not None:
        cfg = resumed.config
    validate_config(cfg)
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.trainer.amp, device)
    experiment_id = setup_experiment(
        cfg.tracking.uri, cfg.tracking.experiment_name, cfg.tracking.artifact_root
    )
    if resumed is not None:
        done = resume_mod.finish_if_done(cfg, resumed)  # a FINISHED run is not trained again
        if done is not None:
            return done

    frame = split_frame(cfg.data)
    fingerprint = data_fingerprint(frame)
    if resumed is not None and resumed.checkpoint["data_fingerprint"] != fingerprint:
        raise resume_mod.ResumeError(
            "the data or split settings changed since the run started (fingerprint "
            f"{resumed.checkpoint['data_fingerprint']} -> {fingerprint}); resume needs the same "
            "data"
        )
    split_paths = save_splits(frame, output_dir / "splits")

    model = build_model(cfg.model, num_classes=len(CLASSES), image_size=cfg.data.image_size)
    validate_model(cfg, model)
    data_config = model.data_config
    mixup = build_mixup(cfg.augment, len(CLASSES))
    loaders = build_loaders(frame, cfg.data, cfg.augment, data_config, device)
    weights = None
    if cfg.loss.class_weights == "inverse_frequency":
        weights = class_weights(
            loaders.train_labels,
            len(CLASSES),
            cfg.loss.class_weight_power,
            cfg.loss.class_weight_clamp,
        )
    elif cfg.loss.class_weights is not None:
        raise ValueError(
            f"loss.class_weights={cfg.loss.class_weights!r}: choose null or inverse_frequency"
        )
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
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    state = RunState()
    if resumed is not None:
        ck = resumed.checkpoint
        model.load_state_dict(ck["model"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        state.epoch = ck["epoch"] + 1
        state.best = Score(**ck["best"]) if ck.get("best") else None
        state.stale_epochs = ck["stale_epochs"]
        state.elapsed = ck["elapsed"]
        state.history = defaultdict(list, {k: list(v) for k, v in ck["history"].items()})

    paths = {
        "latest": output_dir / "checkpoint_latest.pt",
        "best": output_dir / "checkpoint_best.pt",
    }
    if resumed is not None:
        # The new output folder holds the run's whole state from the start: the best weights
        # found before the interruption, and a resumable checkpoint even if no epoch is left.
        for key, src in (("latest", resumed.checkpoint_path), ("best", resumed.best_path)):
            if src is not None:
                copy_checkpoint(src, paths[key])
    # A resumed run keeps the group options it was started with (see tracking.choices).
    choices = config_choices(cfg, resumed.checkpoint if resumed else None)
    base = {
        "format": CHECKPOINT_FORMAT,
        "config": redact_config(OmegaConf.to_container(cfg, resolve=True)),
        "choices": choices,
        "classes": list(CLASSES),
        "data_config": data_config,
        "data_fingerprint": fingerprint,
    }

    run_kwargs: dict[str, Any] = {"experiment_id": experiment_id}
    if resumed is not None:
        run_kwargs = {"run_id": resumed.run_id}
    else:
        run_kwargs["run_name"] = cfg.run_name or default_run_name(cfg, choices)
    run = mlflow.start_run(**run_kwargs)
    status = "FAILED"
    try:
        run_id = run.info.run_id
        base["run_id"] = run_id
        mlflow.set_tags(training_run_tags(cfg, choices, fingerprint, output_dir))
        if resumed is None:
            mlflow.log_params({**loggable_params(base["config"]), **choice_params(choices)})
            mlflow.log_dict(base["config"], "config/resolved_config.json")
            for p in split_paths:
                mlflow.log_artifact(str(p), "splits")
        else:
            mlflow.set_tag("derm_exp.resumed_at_epoch", state.epoch)
            max_epochs = int(cfg.trainer.max_epochs)
            if state.epoch < max_epochs:
                log.info("resuming run %s from epoch %d of %d", run_id, state.epoch + 1, max_epochs)
            else:
                log.info("resuming run %s: all its epochs ran; final evaluation only", run_id)
        log.info("MLflow run %s  (%s)", run_id, run_url_hint(run_id))

        _train_epochs(
            cfg, model, ema, loaders, criterion, mixup, ctx, scaler, state, base, paths, resumed
        )
        mlflow.log_artifact(str(paths["latest"]), "checkpoints")
        result = final_report(cfg, model, paths["best"], loaders, ctx, state.history)
        _report_skipped_images(loaders)
        mlflow.log_artifact(str(paths["best"]), "checkpoints")
        if cfg.registry.enabled:
            register_best_model(cfg, run_id, paths["best"], history=state.history)
        status = "FINISHED"
        print(f"\nMLflow run id: {run_id}\n  {run_url_hint(run_id)}  (start the UI with `make ui`)")
        print(
            f"  best {cfg.trainer.monitor} = {state.best.value:.4f} "
            f"(epoch {state.best.epoch + 1}, {state.best.weights} weights); "
            f"test balanced accuracy = {result['balanced_accuracy']:.4f}"
        )
        return resume_mod.best_objective(state.history, state.best.epoch, str(cfg.objective))
    except TrialPruned:
        status = "KILLED"
        mlflow.set_tag("derm_exp.pruned", "true")
        raise
    except KeyboardInterrupt:
        # Ctrl-C: the partial epoch is dropped; the last completed epoch is on disk already
        # (checkpoints are written atomically), so this is a safe point to stop.
        status = "KILLED"
        with contextlib.suppress(Exception):  # a broken store must not hide the hint below
            if paths["latest"].is_file():
                mlflow.log_artifact(str(paths["latest"]), "checkpoints")
        log.warning("interrupted (run %s marked KILLED). %s", run.info.run_id, _recovery(paths))
        raise
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(
            f"{exc}. Lower optimizer.lr or set trainer.grad_clip_norm and start a new run. "
            f"{_recovery(paths)}"
        ) from exc
    except (OSError, mlflow.exceptions.MlflowException) as exc:
        raise StorageError(
            f"writing run outputs failed ({exc.__class__.__name__}: {exc}). Free disk space / "
            f"fix the artifact store {cfg.tracking.artifact_root} (or tracking.uri). "
            f"{_recovery(paths)}"
        ) from exc
    finally:
        try:
            mlflow.end_run(status=status)
        except Exception as exc:  # the store itself may be what failed
            log.warning("could not mark MLflow run %s as %s: %s", run.info.run_id, status, exc)


def _recovery(paths: dict[str, Path]) -> str:
    """Where the last good checkpoint is and the command that continues from it."""
    latest = paths["latest"]
    if not latest.is_file():
        return "No epoch had completed: nothing to resume, rerun once fixed."
    best = f"; best weights: {paths['best']}" if paths["best"].is_file() else ""
    return (
        f"Training state is safe: last good checkpoint {latest}{best}. Continue with: "
        f"python -m derm_exp.train resume={latest}"
    )


def _make_optimizer(
    cfg: DictConfig, model: torch.nn.Module, stage: int, epochs: int, steps: int, epoch: int
) -> tuple[torch.optim.Optimizer, BatchScheduler]:
    """Stage 1 trains the head of a frozen backbone; stage 2 (or a one-stage run) trains all.
    ``epoch`` (0-based) is where the stage starts or, on resume, continues."""
    frozen = stage == 1
    model.freeze_backbone(frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    freeze = int(cfg.trainer.freeze_backbone_epochs)
    overrides = {}
    if stage == 2 and freeze and cfg.trainer.finetune_lr is not None:
        overrides["lr"] = cfg.trainer.finetune_lr
    optimizer = instantiate(cfg.optimizer, **overrides)(params)
    lr = float(overrides.get("lr", cfg.optimizer.lr))
    if frozen:
        log.info(
            "epoch %d: backbone frozen through epoch %d, training the head only (lr %g)",
            epoch + 1,
            freeze,
            lr,
        )
    elif freeze:
        log.info("epoch %d: backbone unfrozen, fine-tuning all layers (lr %g)", epoch + 1, lr)
    return optimizer, build_scheduler(cfg.scheduler, optimizer, epochs, steps)


def compile_for_training(model: torch.nn.Module, setting: bool | str) -> torch.nn.Module:
    """``trainer.compile``: false | true | a torch.compile mode (default, reduce-overhead,
    max-autotune). Only the training forward/backward is compiled; validation, EMA and
    checkpoints keep using ``model`` itself, so state_dict keys never gain ``_orig_mod.``."""
    if setting in (False, None, "false", "off"):
        return model
    mode = None if setting in (True, "true", "default") else str(setting)
    log.info("torch.compile(mode=%s) for training; the first steps include compilation", mode)
    return torch.compile(model, mode=mode)


def _train_epochs(
    cfg,
    model,
    ema,
    loaders: Loaders,
    criterion,
    mixup,
    ctx,
    scaler,
    state: RunState,
    base: dict,
    paths: dict,
    resumed,
) -> None:
    trainer = cfg.trainer
    max_epochs = int(trainer.max_epochs)
    freeze = int(trainer.freeze_backbone_epochs)
    steps = len(loaders.train)
    stage_of = (lambda e: 1 if e < freeze else 2) if freeze else (lambda e: 2)
    optimizer = scheduler = None
    current_stage = None
    budget = trainer.max_time_minutes * 60 if trainer.max_time_minutes else None
    train_model = compile_for_training(model, trainer.get("compile", False))
    if resumed is not None:
        set_rng_state(resumed.checkpoint["rng"])
    for epoch in range(state.epoch, max_epochs):
        started = time.monotonic()
        stage = stage_of(epoch)
        stage_start, stage_end = (0, freeze) if stage == 1 else (freeze, max_epochs)
        if stage != current_stage:
            optimizer, scheduler = _make_optimizer(
                cfg, model, stage, stage_end - stage_start, steps, epoch
            )
            ck = resumed.checkpoint if resumed is not None else None
            if ck is not None and ck["stage"] == stage and epoch == state.epoch:
                optimizer.load_state_dict(ck["optimizer"])
                scheduler.fast_forward((epoch - stage_start) * steps)
            current_stage = stage
        # Reseed per epoch: an epoch's order and augmentation do not depend on earlier epochs.
        loaders.generator.manual_seed(int(cfg.seed) * 100_003 + epoch)
        torch.manual_seed(int(cfg.seed) * 7_919 + epoch)
        train = train_one_epoch(
            train_model,
            loaders.train,
            criterion,
            optimizer,
            scheduler,
            ctx,
            first_update=(epoch - stage_start) * steps,
            epoch=epoch + 1,
            scaler=scaler,
            mixup=mixup,
            ema=ema,
            desc=f"epoch {epoch + 1}/{max_epochs}",
        )
        check_finite_weights(model, epoch + 1)  # never score or save NaN weights
        chosen, metrics = validate_epoch(cfg, model, ema, loaders, ctx, epoch)
        lr = optimizer.param_groups[0]["lr"]
        row = {
            "train/loss": train["loss"],
            "train/accuracy": train["accuracy"],
            "lr": lr,
            **metrics,
        }
        skipped = float(len(_skipped_images(loaders)))
        mlflow.log_metrics({**row, "data/skipped_images": skipped}, step=epoch + 1)
        for k, v in row.items():
            state.history[k].append(float(v))
        state.history["epoch"].append(float(epoch + 1))
        improved = is_better(chosen, state.best, trainer.monitor_mode)
        if improved:
            state.best, state.stale_epochs = chosen, 0
            weights = ema.module if chosen.weights == "ema" else model
            save_checkpoint(
                {
                    **base,
                    "model": weights.state_dict(),
                    "weights": chosen.weights,
                    "epoch": epoch,
                    "best": chosen.as_dict(),
                },
                paths["best"],
            )
        else:
            state.stale_epochs += 1
        state.epoch = epoch + 1
        state.elapsed += time.monotonic() - started
        save_checkpoint(
            {
                **base,
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler else None,
                "stage": stage,
                "epoch": epoch,
                "best": state.best.as_dict(),
                "stale_epochs": state.stale_epochs,
                "elapsed": state.elapsed,
                "history": dict(state.history),
                "rng": rng_state(),
            },
            paths["latest"],
        )
        log.info(
            "epoch %d/%d  train loss %.4f acc %.3f | val loss %.4f bal.acc %.3f macro-F1 %.3f "
            "AUC %s [%s]%s  %.0fs",
            epoch + 1,
            max_epochs,
            train["loss"],
            train["accuracy"],
            metrics["val/loss"],
            metrics["val/balanced_accuracy"],
            metrics["val/macro_f1"],
            f"{metrics['val/macro_auc']:.3f}" if "val/macro_auc" in metrics else "n/a",
            chosen.weights,
            "  *best*" if improved else "",
            time.monotonic() - started,
        )
        run_epoch_end_hooks(epoch + 1, row)
        if state.stale_epochs >= int(trainer.early_stopping_patience):
            log.info(
                "early stopping: %s has not improved for %d epochs",
                trainer.monitor,
                state.stale_epochs,
            )
            break
        if budget is not None and state.elapsed + state.elapsed / state.epoch > budget:
            log.info("time budget of %.1f min reached after epoch %d", budget / 60, epoch + 1)
            mlflow.set_tag("derm_exp.stopped_by", "time_budget")
            break


def _skipped_images(loaders: Loaders) -> list[str]:
    """Unreadable images skipped so far under ``data.on_bad_image=skip`` (every split)."""
    return [
        str(p)
        for dl in (loaders.train, loaders.val, loaders.test)
        for p in getattr(dl.dataset, "bad_images", [])
    ]


def _report_skipped_images(loaders: Loaders) -> None:
    """After training: warn about skipped images, tag the run with their count, log the list."""
    bad = _skipped_images(loaders)
    mlflow.set_tag("derm_exp.skipped_images", len(bad))
    if bad:
        mlflow.log_text("\n".join(bad) + "\n", "data/skipped_images.txt")
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        log.warning(
            "%d unreadable image(s) were skipped (data.on_bad_image=skip): %s. Check the dataset "
            "with `python -m derm_exp.prepare_data`, or set data.on_bad_image=error to stop.",
            len(bad),
            shown,
        )
