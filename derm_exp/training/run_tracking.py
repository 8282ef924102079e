"""A training run's MLflow lifecycle: start it (name, tags, params, config, splits; or reopen
the run being resumed), and end it FINISHED, KILLED or FAILED with a message that says where
the last good checkpoint is and how to continue."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig

from derm_exp.errors import StorageError
from derm_exp.tracking.choices import choice_params, default_run_name
from derm_exp.tracking.mlflow_run import loggable_params, run_url_hint, training_run_tags
from derm_exp.training import distributed
from derm_exp.training.hooks import TrialPruned
from derm_exp.training.loop import NonFiniteLossError

log = logging.getLogger(__name__)


@dataclass
class CheckpointPaths:
    """The run's two checkpoint files in its output folder."""

    latest: Path
    best: Path

    @classmethod
    def in_folder(cls, output_dir: Path) -> CheckpointPaths:
        return cls(output_dir / "checkpoint_latest.pt", output_dir / "checkpoint_best.pt")


def open_run(
    cfg: DictConfig, experiment_id: str, choices: Mapping[str, str], resumed_run_id: str | None
) -> str:
    """Start a new MLflow run (named ``run_name`` or by its options) or reopen the resumed one;
    returns its id. End it with :func:`run_outcome`."""
    if resumed_run_id is not None:
        return mlflow.start_run(run_id=resumed_run_id).info.run_id
    name = cfg.run_name or default_run_name(cfg, choices)
    return mlflow.start_run(experiment_id=experiment_id, run_name=name).info.run_id


def log_run_start(
    cfg: DictConfig,
    run_id: str,
    meta: Mapping[str, Any],
    split_paths: list[Path],
    output_dir: Path,
    *,
    resumed: bool,
    start_epoch: int,
) -> None:
    """Tag the run and, for a new one, log its params, resolved config and split CSVs; a resumed
    one is tagged with the epoch it continues from. ``meta`` is the checkpoint metadata."""
    choices = meta["choices"]
    mlflow.set_tags(training_run_tags(cfg, choices, meta["data_fingerprint"], output_dir))
    if not resumed:
        mlflow.log_params({**loggable_params(meta["config"]), **choice_params(choices)})
        mlflow.log_dict(meta["config"], "config/resolved_config.json")
        for p in split_paths:
            mlflow.log_artifact(str(p), "splits")
    else:
        mlflow.set_tag("derm_exp.resumed_at_epoch", start_epoch)
        max_epochs = int(cfg.trainer.max_epochs)
        if start_epoch < max_epochs:
            log.info("resuming run %s from epoch %d of %d", run_id, start_epoch + 1, max_epochs)
        else:
            log.info("resuming run %s: all its epochs ran; final evaluation only", run_id)
    log.info("MLflow run %s  (%s)", run_id, run_url_hint(run_id))


@dataclass
class Outcome:
    """How the run ends; set ``status = "FINISHED"`` once everything succeeded."""

    status: str = "FAILED"


@contextlib.contextmanager
def run_outcome(cfg: DictConfig, run_id: str, paths: CheckpointPaths) -> Iterator[Outcome]:
    """End the active MLflow run with the outcome of the block, whatever happens in it.

    Pruned by a hook or Ctrl-C: KILLED (Ctrl-C drops the partial epoch; the last completed one
    is on disk, written atomically, and is logged). NaN or a failing store: FAILED, re-raised as
    a clear error naming the last good checkpoint and the command that continues from it.
    """
    outcome = Outcome()
    try:
        yield outcome
    except TrialPruned:
        outcome.status = "KILLED"
        mlflow.set_tag("derm_exp.pruned", "true")
        raise
    except KeyboardInterrupt:
        outcome.status = "KILLED"
        with contextlib.suppress(Exception):  # a broken store must not hide the hint below
            if paths.latest.is_file():
                mlflow.log_artifact(str(paths.latest), "checkpoints")
        log.warning("interrupted (run %s marked KILLED). %s", run_id, recovery_hint(paths))
        raise
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(
            f"{exc}. Lower optimizer.lr or set trainer.grad_clip_norm and start a new run. "
            f"{recovery_hint(paths)}"
        ) from exc
    except (OSError, mlflow.exceptions.MlflowException) as exc:
        raise StorageError(
            f"writing run outputs failed ({exc.__class__.__name__}: {exc}). Free disk space / "
            f"fix the artifact store {cfg.tracking.artifact_root} (or tracking.uri). "
            f"{recovery_hint(paths)}"
        ) from exc
    finally:
        with distributed.stops_deferred():
            _end(run_id, outcome.status)


def _end(run_id: str, status: str) -> None:
    try:
        mlflow.end_run(status=status)
    except Exception as exc:  # the store itself may be what failed
        log.warning("could not mark MLflow run %s as %s: %s", run_id, status, exc)


def recovery_hint(paths: CheckpointPaths) -> str:
    """Where the last good checkpoint is and the command that continues from it."""
    if not paths.latest.is_file():
        return "No epoch had completed: nothing to resume, rerun once fixed."
    best = f"; best weights: {paths.best}" if paths.best.is_file() else ""
    return (
        f"Training state is safe: last good checkpoint {paths.latest}{best}. Continue with: "
        f"{distributed.train_command()} resume={paths.latest}"
    )
