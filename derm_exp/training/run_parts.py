"""The state a training run carries between its steps (:mod:`.trainer`, :mod:`.epoch_end`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from timm.utils import ModelEmaV3

from derm_exp.training import resume as resume_mod
from derm_exp.training.budget_fit import FittedSchedule, restore_fitted
from derm_exp.training.data_setup import Loaders
from derm_exp.training.loop import StepContext
from derm_exp.training.run_tracking import CheckpointPaths
from derm_exp.training.selection import Score


@dataclass
class RunState:
    """Everything that changes from epoch to epoch (and is restored on resume)."""

    epoch: int = 0  # next epoch to run (0-based)
    best: Score | None = None
    stale_epochs: int = 0
    elapsed: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    fitted: FittedSchedule | None = None  # the schedule fitted to the time budget, if any


@dataclass
class TrainParts:
    """What the epochs train with, as :func:`.trainer.build_parts` sets it up."""

    model: torch.nn.Module  # the weights that are trained, validated and saved
    train_model: torch.nn.Module  # the same module, torch.compile'd when trainer.compile asks
    criterion: torch.nn.Module
    mixup: Callable | None
    ema: ModelEmaV3 | None
    ctx: StepContext
    scaler: torch.amp.GradScaler | None


@dataclass
class Run:
    """A run's fixed parts, set up once by :func:`.trainer.set_up_run` and shared by the steps."""

    cfg: DictConfig
    output_dir: Path
    loaders: Loaders
    parts: TrainParts
    meta: dict  # checkpoint metadata (checkpoint_meta); its run_id is set once the run is open
    paths: CheckpointPaths
    split_paths: list[Path]
    resumed: resume_mod.Resumed | None


def restore_state(cfg: DictConfig, parts: TrainParts, ck: dict) -> RunState:
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
        fitted=restore_fitted(cfg, ck.get("fitted_schedule")),
    )
