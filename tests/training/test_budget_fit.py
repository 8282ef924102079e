"""trainer.fit_schedule_to_budget: the LR schedule compressed to the epochs the budget allows."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.training import trainer
from derm_exp.training.budget_fit import FittedSchedule, fit_schedule, restore_fitted
from derm_exp.training.resume import stop_reason
from derm_exp.training.schedulers import build_scheduler
from derm_exp.training.stages import StageOptimizers
from tests.conftest import compose_train
from tests.training.test_schedulers import BASE_LR, STEPS, _lrs, _optimizer, _TwoPart
from tests.training.test_train_e2e import _only_run

CYCLES = ["scheduler=cosine_warmup", "scheduler.warmup_epochs=0", "scheduler.cycle_epochs=1"]


def _cfg(*overrides: str) -> DictConfig:
    return compose_train(
        [
            f"optimizer.lr={BASE_LR}",
            "trainer.max_epochs=7",  # cycles of 1, 2 and 4 epochs
            "trainer.max_time_minutes=10",
            "trainer.fit_schedule_to_budget=true",
            *CYCLES,
            *overrides,
        ]
    )


def _restarts(lrs: list[float]) -> list[int]:
    return [t for t in range(1, len(lrs)) if lrs[t] > lrs[t - 1]]


@pytest.mark.parametrize(
    ("seconds", "expected"), [(120.0, 4), (60.0, None), (1000.0, 2), (86.0, 6)]
)
def test_the_first_epoch_time_says_how_many_epochs_fit(seconds: float, expected: int) -> None:
    """97 % of the 600 s budget over the first epoch's time; None when all 7 fit; never
    fewer than one epoch after the first."""
    fitted = fit_schedule(_cfg(), 1, seconds)
    assert (fitted.epochs if fitted else None) == expected
    if fitted:
        assert (fitted.max_epochs, fitted.max_time_minutes) == (7, 10.0)


@pytest.mark.parametrize(
    "overrides",
    [["trainer.fit_schedule_to_budget=false"], ["trainer.max_time_minutes=null"]],
)
def test_nothing_is_fitted_without_the_option_or_a_budget(overrides: list[str]) -> None:
    assert fit_schedule(_cfg(*overrides), 1, 500.0) is None


def test_only_the_first_epoch_fits_the_schedule() -> None:
    assert fit_schedule(_cfg(), 2, 500.0) is None


def test_the_compressed_schedule_keeps_its_cycles_and_ends_annealed() -> None:
    cfg = _cfg().scheduler
    planned_opt, fitted_opt = _optimizer(), _optimizer()
    planned = _lrs(planned_opt, build_scheduler(cfg, planned_opt, 7, STEPS), 0, 7 * STEPS)
    short = build_scheduler(cfg, fitted_opt, 5, STEPS, planned_epochs=7)
    fitted = _lrs(fitted_opt, short, 0, 5 * STEPS)
    # Restarts after 1 and 3 of 7 planned epochs: after 5/7 of that in the fitted schedule,
    # and none in its last update.
    assert _restarts(planned) == [STEPS, 3 * STEPS]
    assert _restarts(fitted) == [math.ceil(STEPS * 5 / 7), math.ceil(3 * STEPS * 5 / 7)]
    # The planned schedule cut at epoch 5 is high in its last cycle; the fitted one ends low.
    assert planned[5 * STEPS - 1] > 0.4 * max(planned[3 * STEPS :])
    assert fitted[-1] < 0.02 * BASE_LR
    assert max(fitted) == pytest.approx(max(planned))


def _fitted_run_lrs(cfg: DictConfig, last: int, resume_epoch: int | None) -> list[float]:
    """Per-update LRs of a run fitted to ``last`` epochs after epoch 1, as the trainer drives
    :class:`StageOptimizers`; with ``resume_epoch`` it stops there and continues from the
    saved optimizer state with the fitted length restored (``train resume=<id>``)."""
    model = _TwoPart()
    optimizers = StageOptimizers(cfg, model, STEPS)
    used: list[float] = []
    saved: dict | None = None
    for epoch in range(last):
        if epoch == resume_epoch:
            optimizers = StageOptimizers(cfg, model, STEPS, epoch, saved, last)
        step = optimizers.for_epoch(epoch)
        used += _lrs(step.optimizer, step.scheduler, step.first_update, step.first_update + STEPS)
        if epoch == 0 and resume_epoch != 0:
            optimizers.fit_to(last, 1)
        saved = {"stage": optimizers.current.stage, "optimizer": step.optimizer.state_dict()}
    return used


@pytest.mark.parametrize("freeze", [0, 1])  # the all-layers stage: 7 planned epochs, 5 fitted
@pytest.mark.parametrize("resume_epoch", [1, 3])
def test_a_resumed_fitted_run_follows_the_same_schedule(freeze: int, resume_epoch: int) -> None:
    cfg = _cfg(
        f"trainer.freeze_backbone_epochs={freeze}",
        f"trainer.max_epochs={7 + freeze}",
        "trainer.finetune_lr=1e-3",
    )
    straight = _fitted_run_lrs(cfg, 5 + freeze, None)
    assert _fitted_run_lrs(cfg, 5 + freeze, resume_epoch) == pytest.approx(straight, rel=1e-12)
    assert len(_restarts(straight[freeze * STEPS :])) == 2
    assert straight[-1] < 0.02 * max(straight[freeze * STEPS :])  # annealed at the fitted end


def test_a_resume_that_changes_the_limits_drops_the_fitted_length() -> None:
    saved = FittedSchedule(4, 7, 10.0).as_dict()
    assert restore_fitted(_cfg(), saved) == FittedSchedule(4, 7, 10.0)
    assert restore_fitted(_cfg("trainer.max_time_minutes=20"), saved) is None
    assert restore_fitted(_cfg("trainer.max_epochs=9"), saved) is None
    assert restore_fitted(_cfg(), None) is None


def test_a_run_that_trained_its_fitted_epochs_is_done() -> None:
    checkpoint = {
        "epoch": 3,
        "stale_epochs": 0,
        "elapsed": 300.0,
        "fitted_schedule": FittedSchedule(4, 7, 10.0).as_dict(),
    }
    reason, override = stop_reason(checkpoint, _cfg())
    assert "all 4 epochs" in reason and "trainer.fit_schedule_to_budget" in reason
    assert override == "trainer.max_time_minutes=20"
    assert stop_reason({**checkpoint, "epoch": 2, "elapsed": 225.0}, _cfg()) is None


class _Clock:
    """``time.monotonic`` for the trainer: every reading is ``step`` seconds after the last,
    so each epoch takes ``step`` seconds whatever the machine."""

    def __init__(self, step: float) -> None:
        self.ticks = itertools.count()
        self.step = step

    def monotonic(self) -> float:
        return next(self.ticks) * self.step


def test_training_stops_at_the_fitted_length_on_an_annealed_lr(
    tiny_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epochs of 20 s in a 1-minute budget: 2 of 3 epochs fit (cycles of 1 and 2 planned),
    and the compressed schedule ends with the second."""
    monkeypatch.setattr(trainer, "time", _Clock(20.0))
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 3
        tiny_cfg.trainer.max_time_minutes = 1
        tiny_cfg.trainer.fit_schedule_to_budget = True
        tiny_cfg.scheduler.cycle_epochs = 1.0
        tiny_cfg.scheduler.warmup_epochs = 0.0
        tiny_cfg.registry.enabled = False
    trainer.fit(tiny_cfg, tmp_path / "out")

    client, run = _only_run(tiny_cfg)
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.fitted_epochs"] == "2"
    assert "derm_exp.stopped_by" not in run.data.tags  # it ran to its (fitted) end
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1, 2]
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    assert lrs[-1] < 0.05 * float(tiny_cfg.optimizer.lr)  # the fitted last cycle annealed
    latest = load_checkpoint(tmp_path / "out" / "checkpoint_latest.pt")
    assert latest["fitted_schedule"] == {"epochs": 2, "max_epochs": 3, "max_time_minutes": 1.0}
