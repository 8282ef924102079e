"""What the sweeper tells the user about a study: the end-of-sweep summary and file headers."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from derm_exp.config import CONF_DIR
from derm_exp.tracking.mlflow_run import mask_credentials
from derm_exp.tuning.study import best_trial, degenerate_count, finished_count, state_counts

log = logging.getLogger(__name__)


def searchpath_hint(path: Path) -> str:
    """The ``hydra.searchpath`` override that makes ``path`` selectable ('' in conf/experiment)."""
    if path.parent.resolve() == (CONF_DIR / "experiment").resolve():
        return ""
    return f" 'hydra.searchpath=[file://{path.parent.parent.resolve()}]'"


def retrain_command(study_name: str, path: Path | None) -> str:
    """The command that trains the best trial again from its experiment file."""
    hint = searchpath_hint(path) if path is not None else ""
    return f"python -m derm_exp.train experiment=best_{study_name}{hint}"


def best_header(
    study_name: str,
    objective: str,
    direction: str,
    best: FrozenTrial,
    storage_url: str | None,
    path: Path | None,
) -> list[str]:
    """The comment lines at the top of ``best_<study>.yaml``."""
    return [
        f"Best trial {best.number} of Optuna study '{study_name}': "
        f"{objective} = {best.value:.4f} ({direction}).",
        f"Written by the derm_optuna sweeper on {datetime.now():%Y-%m-%d %H:%M} from "
        f"{mask_credentials(str(storage_url))}.",
        f"Reproduce: {retrain_command(study_name, path)}",
    ]


def counts_line(study: optuna.Study, n_trials: int) -> str:
    """``4 of n_trials=4 finished (2 complete, 2 pruned); 0 failed, ...``."""
    counts = state_counts(study)
    degenerate = degenerate_count(study)
    complete = f"{counts['COMPLETE']} complete"
    if degenerate:
        complete += f" ({degenerate} degenerate)"
    return (
        f"{finished_count(study)} of n_trials={n_trials} finished ({complete}, "
        f"{counts['PRUNED']} pruned); {counts['FAIL']} failed, "
        f"{counts['RUNNING']} running elsewhere or stale"
    )


def best_lines(
    study: optuna.Study, study_name: str, objective: str, path: Path | None
) -> list[str]:
    """The best trial, its parameters and how to retrain it (or why there is none)."""
    best = best_trial(study)
    if best is None:
        degenerate = degenerate_count(study)
        if degenerate:
            return [
                f"  no usable trial: the model of every completed trial ({degenerate}) is "
                "degenerate (one class for nearly every image), so no best config was written"
            ]
        return ["  no completed trial yet"]
    lines = [f"  best trial {best.number}: {objective} = {best.value:.4f}"]
    lines += [f"    {k} = {v}" for k, v in best.params.items()]
    if path is not None:
        lines.append(f"  best config: {path}")
        lines.append(f"    {retrain_command(study_name, path)}")
    return lines


def finished_message(
    study: optuna.Study,
    study_name: str,
    n_trials: int,
    storage_url: str | None,
    objective: str,
    path: Path | None,
) -> str:
    """What a re-run of a study that already has ``n_trials`` finished trials prints."""
    done = finished_count(study)
    return "\n".join(
        [
            f"Optuna study '{study_name}' ({mask_credentials(str(storage_url))}) already has "
            f"{done} finished trials (n_trials={n_trials}): nothing to run, no sweep folder or "
            "MLflow run created. Raise hydra.sweeper.n_trials to extend it (e.g. "
            f"hydra.sweeper.n_trials={done + n_trials}), or set another hydra.sweeper.study_name "
            "for a new study.",
            f"  {counts_line(study, n_trials)}",
            *best_lines(study, study_name, objective, path),
        ]
    )


def log_start(study: optuna.Study, study_name: str, n_trials: int, failed_now: list[int]) -> None:
    """Log the state a sweep finds its study in."""
    if failed_now:
        log.warning("trials %s were left RUNNING by a process that died: marked FAIL", failed_now)
    counts = state_counts(study)
    done = finished_count(study)
    if sum(counts.values()):
        log.info(
            "resuming study '%s': %d finished, %d failed, %d running elsewhere",
            study_name,
            done,
            counts["FAIL"],
            counts["RUNNING"],
        )
    if done < n_trials:
        log.info(
            "study '%s': %d more trial(s) to reach n_trials=%d",
            study_name,
            n_trials - done,
            n_trials,
        )
