"""``resume=<checkpoint or run id>``: find the checkpoint and rebuild the run's own config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from derm_exp.errors import UserError
from derm_exp.training.checkpoint import load_checkpoint

# What may change when continuing a run; anything else must match the checkpoint's config.
RESUMABLE_KEYS = (
    "resume",
    "device",
    "trainer.max_epochs",
    "trainer.max_time_minutes",
    "trainer.early_stopping_patience",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.root",
    "data.demo.dir",
    "data.cache_dir",
    "data.cache_key",
    "tracking.uri",
    "tracking.artifact_root",
    "tracking.request_timeout_s",
    "tracking.max_retries",
    "tracking.retry_backoff_s",
)
# What checkpoint_latest.pt holds beyond the weights; checkpoint_best.pt lacks most of it.
_LATEST_KEYS = (
    "config",
    "run_id",
    "data_fingerprint",
    "model",
    "optimizer",
    "stage",
    "epoch",
    "best",
    "stale_epochs",
    "elapsed",
    "history",
    "rng",
)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ResumeError(UserError, ValueError):
    """The run cannot be resumed as asked."""


@dataclass
class Resumed:
    config: DictConfig
    checkpoint: dict[str, Any]
    run_id: str
    best_path: Path | None
    checkpoint_path: Path | None = None


def locate_checkpoint(ref: str, tracking_uri: str) -> Path:
    """A checkpoint path as given, or the latest checkpoint of MLflow run ``ref``."""
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "checkpoint_latest.pt"
    if path.is_file():
        return path
    if not _RUN_ID.match(ref):
        raise ResumeError(f"resume={ref}: no such checkpoint file, and not an MLflow run id")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    try:
        run = MlflowClient().get_run(ref)
    except mlflow.exceptions.MlflowException as exc:
        raise ResumeError(f"resume={ref}: no such MLflow run in {tracking_uri}") from exc
    local = Path(run.data.tags.get("derm_exp.checkpoint_dir", "")) / "checkpoint_latest.pt"
    if local.is_file():
        return local
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=ref, artifact_path="checkpoints/checkpoint_latest.pt"
            )
        )
    except Exception as exc:
        raise ResumeError(f"run {ref} has no checkpoint_latest.pt (local or logged)") from exc


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
    missing = [k for k in _LATEST_KEYS if k not in ck] if isinstance(ck, dict) else _LATEST_KEYS
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
