"""``resume=<checkpoint or run id>``: find the checkpoint and rebuild the run's own config.

A run that is FINISHED (trained, evaluated, registered) is not trained again: resuming it says
so and does nothing, unless the command raises the limit that stopped it
(``trainer.max_epochs``, ``trainer.early_stopping_patience`` or ``trainer.max_time_minutes``);
see :func:`finish_if_done`. A run that stopped before finishing (killed, failed) continues,
or only runs its final evaluation when no epoch is left.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from derm_exp.errors import UserError
from derm_exp.models.checkpoint import LATEST_KEYS, load_checkpoint
from derm_exp.training.budget_fit import restore_fitted

# What may change when continuing a run; anything else must match the checkpoint's config.
RESUMABLE_KEYS = (
    "resume",
    "device",
    "trainer.max_epochs",
    "trainer.max_time_minutes",
    "trainer.early_stopping_patience",
    "trainer.log_every_n_steps",
    "trainer.ddp_timeout_s",
    "data.num_workers",
    "data.root",
    "data.demo.dir",
    "data.cache_dir",
    "data.cache_key",
    "tracking.uri",
    "tracking.artifact_root",
    "registry.allow_degenerate",
    "tracking.request_timeout_s",
    "tracking.max_retries",
    "tracking.retry_backoff_s",
)
CHECKPOINT_DIR_TAG = "derm_exp.checkpoint_dir"  # run tag: the run's output folder


class ResumeError(UserError, ValueError):
    """The run cannot be resumed as asked."""


@dataclass
class Resumed:
    config: DictConfig
    checkpoint: dict[str, Any]
    run_id: str
    best_path: Path | None
    checkpoint_path: Path | None = None


def share_across_ranks(resumed: Resumed | None) -> Resumed | None:
    """Rank 0's ``resumed`` on every DDP rank (itself alone): the checkpoint travels in
    ``torch.save`` form and loads ``weights_only`` (tensors and containers), the rest pickled."""
    from derm_exp.training import distributed

    if not distributed.is_distributed():
        return resumed
    checkpoint = distributed.broadcast_saved(resumed.checkpoint if resumed else None)
    rest = distributed.broadcast(replace(resumed, checkpoint={}) if resumed else None)
    return None if rest is None else replace(rest, checkpoint=checkpoint)


def locate_checkpoint(ref: str, tracking_uri: str) -> Path:
    """A checkpoint path as given (a folder: its ``checkpoint_latest.pt``), or the latest
    checkpoint of MLflow run ``ref``: the one in the run's output folder when it is still
    there (it may be newer than the logged one), else the run's logged artifact."""
    from derm_exp.tracking.model_refs import LATEST_CHECKPOINT, ModelRefError, parse_ref

    try:
        parsed = parse_ref(ref, "resume", LATEST_CHECKPOINT, kinds=("checkpoint", "run"))
        if parsed.kind == "checkpoint":
            return parsed.path
        from derm_exp.tracking.model_lookup import get_run, run_artifact

        run = get_run(parsed.run_id, tracking_uri)
        local = Path(run.data.tags.get(CHECKPOINT_DIR_TAG, "")) / LATEST_CHECKPOINT
        if local.is_file():
            return local
        return run_artifact(parsed.run_id, f"checkpoints/{LATEST_CHECKPOINT}", tracking_uri)
    except ModelRefError as exc:
        raise ResumeError(str(exc)) from None


def _override_keys(overrides: list[str]) -> list[str]:
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~").replace("/", ".")
        if not key.startswith("hydra."):
            keys.append(key)
    return keys


def load_for_resume(cfg: DictConfig, overrides: list[str]) -> Resumed:
    """Load the checkpoint named by ``cfg.resume`` and merge the allowed command-line changes."""
    path = locate_checkpoint(str(cfg.resume), cfg.tracking.uri)
    ck = load_checkpoint(path)
    missing = [k for k in LATEST_KEYS if k not in ck] if isinstance(ck, dict) else LATEST_KEYS
    if missing:
        raise ResumeError(
            f"{path} is not a derm_exp checkpoint_latest.pt (missing {', '.join(missing)}); "
            "resume from the checkpoint_latest.pt of the run's output folder or its MLflow run id"
        )
    config = OmegaConf.create(ck["config"])
    for key in _override_keys(overrides):
        new, old = OmegaConf.select(cfg, key), OmegaConf.select(config, key)
        if new == old:
            continue
        if key not in RESUMABLE_KEYS:
            raise ResumeError(
                f"cannot change {key} when resuming: the checkpoint was trained with "
                f"{key}={OmegaConf.to_yaml(old).strip() if isinstance(old, DictConfig) else old}. "
                f"Changeable on resume: {', '.join(RESUMABLE_KEYS)}"
            )
        OmegaConf.update(config, key, new, merge=False)
    if "***" in str(OmegaConf.select(config, "tracking.uri")):
        raise ResumeError(
            f"the run was tracked at {config.tracking.uri}; credentials are never stored, so pass "
            "the tracking URI again: resume=... tracking.uri=<uri with credentials> (or set "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and a URI without them)"
        )
    config.resume = str(cfg.resume)
    best = path.parent / "checkpoint_best.pt"
    return Resumed(config, ck, ck["run_id"], best if best.is_file() else None, path)


def check_same_data(resumed: Resumed, fingerprint: str) -> None:
    """Refuse to continue on other data: the split assignment must hash the same."""
    stored = resumed.checkpoint["data_fingerprint"]
    if stored != fingerprint:
        raise ResumeError(
            f"the data or split settings changed since the run started (fingerprint {stored} -> "
            f"{fingerprint}); resume needs the same data"
        )


# ---------------------------------------------------------------------------------------------
# Finished runs: resuming one does nothing unless a limit that stopped it was raised.


def best_objective(history: dict[str, list[float]], best_epoch: int, objective: str) -> float:
    """``objective`` at the selected epoch (0-based ``best_epoch``) of a run's history."""
    row = list(history["epoch"]).index(float(best_epoch + 1))
    return float(history[objective][row])


def stop_reason(checkpoint: dict[str, Any], cfg: DictConfig) -> tuple[str, str] | None:
    """Why the training loop would not run another epoch under ``cfg`` (what stopped it, and the
    override that continues it), or None when it would."""
    trainer = cfg.trainer
    done = int(checkpoint["epoch"]) + 1
    fitted = restore_fitted(cfg, checkpoint.get("fitted_schedule"))
    if fitted is not None and done >= fitted.epochs:
        return (
            f"it trained all {fitted.epochs} epochs that its time budget trainer.max_time_minutes="
            f"{trainer.max_time_minutes} allowed (trainer.fit_schedule_to_budget)",
            f"trainer.max_time_minutes={float(trainer.max_time_minutes) * 2:g}",
        )
    if done >= int(trainer.max_epochs):
        return (
            f"it trained all trainer.max_epochs={trainer.max_epochs} epochs",
            f"trainer.max_epochs={done + 5}",
        )
    patience = int(trainer.early_stopping_patience)
    if int(checkpoint["stale_epochs"]) >= patience:
        return (
            f"early stopping ended it after epoch {done} (trainer.early_stopping_patience="
            f"{patience})",
            f"trainer.early_stopping_patience={patience + 5}",
        )
    budget = trainer.max_time_minutes
    elapsed = float(checkpoint["elapsed"])
    if budget and elapsed + elapsed / done > float(budget) * 60:
        return (
            f"its time budget trainer.max_time_minutes={budget} was used up",
            f"trainer.max_time_minutes={float(budget) * 2:g}",
        )
    return None


def _run_state(run_id: str) -> tuple[str | None, dict[str, str]]:
    """The MLflow status and tags of ``run_id`` (None, {} when the store does not know it)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None, {}
    return run.info.status, dict(run.data.tags)


def finish_if_done(cfg: DictConfig, resumed: Resumed) -> float | None:
    """``resume=`` of a FINISHED run with no epoch left: say so and do nothing (no second
    evaluation, version or alias move), except register its model when that was skipped for
    being degenerate and ``registry.allow_degenerate=true`` now asks for it. Returns the run's
    objective then; None when the run is not finished or a raised limit continues it."""
    ck = resumed.checkpoint
    status, tags = _run_state(resumed.run_id)
    stopped = stop_reason(ck, cfg)
    if status != "FINISHED" or stopped is None:
        return None
    from derm_exp.tracking.registry_search import search_versions
    from derm_exp.training.registration import SKIPPED_TAG, register_best_model

    value = best_objective(ck["history"], int(ck["best"]["epoch"]), str(cfg.objective))
    registry = cfg.get("registry") or {}
    skipped = tags.get(SKIPPED_TAG) == "degenerate"
    if registry.get("enabled", True) and registry.get("allow_degenerate", False) and skipped:
        print(f"Run {resumed.run_id} is finished; registering its degenerate model as asked.")
        best = _best_checkpoint(resumed, cfg.tracking.uri)
        register_best_model(cfg, resumed.run_id, best, history=ck["history"])
        return value
    run_id, (why, more) = resumed.run_id, stopped
    name = str(registry.get("name", "derm-classifier"))
    versions = [str(v.version) for v in search_versions(name, filter=f"run_id = '{run_id}'")]
    outcome = (
        f"registered as {name} version {', '.join(versions)}" if versions else "not registered"
    )
    if skipped:
        outcome += " (degenerate model; add registry.allow_degenerate=true to register it)"
    print(
        f"Run {run_id} is already finished: {why}; best {cfg.trainer.monitor} = "
        f"{ck['best']['value']:.4f} at epoch {int(ck['best']['epoch']) + 1}, evaluated, "
        f"{outcome}. Nothing to do.\n"
        f"  Train it further: python -m derm_exp.train resume={run_id} {more}\n"
        f"  Evaluate it again: python -m derm_exp.evaluate model={run_id}"
    )
    return value


def _best_checkpoint(resumed: Resumed, tracking_uri: str) -> Path:
    """The run's ``checkpoint_best.pt`` (calibrated): beside its latest checkpoint, or logged."""
    if resumed.best_path is not None:
        return resumed.best_path
    from derm_exp.tracking.model_lookup import run_artifact
    from derm_exp.tracking.model_refs import BEST_CHECKPOINT, ModelRefError

    try:
        return run_artifact(resumed.run_id, f"checkpoints/{BEST_CHECKPOINT}", tracking_uri)
    except ModelRefError as exc:
        raise ResumeError(str(exc)) from None
