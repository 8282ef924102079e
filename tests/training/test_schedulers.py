"""LR schedules (the ``scheduler`` group) and their fast-forward when a run is resumed."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from derm_exp.training.schedulers import BatchScheduler, build_scheduler
from derm_exp.training.stages import StageOptimizers
from tests.conftest import compose_train

BASE_LR = 1e-2
STEPS = 10  # optimizer updates per epoch


def _cfg(option: str, overrides: list[str] | None = None) -> DictConfig:
    """The composed train config with ``scheduler=<option>`` and ``optimizer.lr=BASE_LR``."""
    return compose_train([f"scheduler={option}", f"optimizer.lr={BASE_LR}", *(overrides or [])])


def _optimizer(lr: float = BASE_LR) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _lrs(
    optimizer: torch.optim.Optimizer, scheduler: BatchScheduler, start: int, stop: int
) -> list[float]:
    """LRs used by updates ``start..stop-1``, driven the way ``train_one_epoch`` does."""
    used = []
    for update in range(start, stop):
        scheduler.step(update)
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
    return used


def _schedule(option: str, epochs: int, overrides: list[str] | None = None) -> list[float]:
    optimizer = _optimizer()
    scheduler = build_scheduler(_cfg(option, overrides).scheduler, optimizer, epochs, STEPS)
    return _lrs(optimizer, scheduler, 0, epochs * STEPS)


def test_cosine_is_the_closed_form_decay_to_min_lr() -> None:
    cfg = _cfg("cosine")
    lrs = _schedule("cosine", 4)
    total, low = 4 * STEPS, cfg.scheduler.min_lr
    expected = [
        low + 0.5 * (BASE_LR - low) * (1 + math.cos(math.pi * t / total)) for t in range(40)
    ]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(BASE_LR)


def test_cosine_warmup_rises_linearly_then_decays() -> None:
    cfg = _cfg("cosine_warmup")
    lrs = _schedule("cosine_warmup", 5)
    warmup = int(cfg.scheduler.warmup_epochs * STEPS)
    assert warmup > 0
    assert lrs[0] == pytest.approx(cfg.scheduler.warmup_lr_init)
    rise = [b - a for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1], strict=True)]
    assert rise == pytest.approx([rise[0]] * warmup, rel=1e-6)  # linear warm-up
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert peak == warmup and 0.95 * BASE_LR < lrs[peak] <= BASE_LR
    after = lrs[warmup:]
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))  # no restart by default
    assert lrs[-1] < 0.01 * BASE_LR


def test_cosine_warmup_restarts_with_shorter_peaks() -> None:
    cfg = _cfg("cosine_warmup", ["scheduler.warmup_epochs=0", "scheduler.cycle_epochs=1"])
    lrs = _schedule("cosine_warmup", 7, ["scheduler.warmup_epochs=0", "scheduler.cycle_epochs=1"])
    mul, decay = cfg.scheduler.cycle_mul, cfg.scheduler.cycle_decay
    # Cycles of 1, mul and mul^2 epochs: restarts where the LR jumps up.
    jumps = [t for t in range(1, len(lrs)) if lrs[t] > lrs[t - 1]]
    assert jumps == [STEPS, STEPS + int(mul * STEPS)]
    assert lrs[jumps[0]] == pytest.approx(BASE_LR * decay, rel=1e-6)
    assert lrs[jumps[1]] == pytest.approx(BASE_LR * decay**2, rel=1e-6)


def test_onecycle_peaks_at_optimizer_lr_and_ends_at_its_floor() -> None:
    cfg = _cfg("onecycle").scheduler
    lrs = _schedule("onecycle", 4)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(BASE_LR, rel=0.01)
    assert peak == pytest.approx(cfg.pct_start * len(lrs), abs=1.5)
    start = BASE_LR / cfg.div_factor
    assert lrs[0] == pytest.approx(start)  # the first update uses the schedule's first value
    assert lrs[-1] == pytest.approx(start / cfg.final_div_factor)


def test_none_keeps_the_optimizer_lr() -> None:
    assert _schedule("none", 3) == [BASE_LR] * (3 * STEPS)


def test_unknown_name_lists_the_choices() -> None:
    cfg = _cfg("cosine").scheduler
    with open_dict(cfg):
        cfg.name = "cosin"
    with pytest.raises(ValueError, match="scheduler.name='cosin': choose one of .*onecycle"):
        build_scheduler(cfg, _optimizer(), 2, STEPS)


@pytest.mark.parametrize("option", ["cosine_warmup", "cosine", "onecycle", "none"])
@pytest.mark.parametrize("resume_at", [0, 3, STEPS, 2 * STEPS + 7])
def test_fast_forward_continues_the_same_schedule(option: str, resume_at: int) -> None:
    epochs = 4
    cfg = _cfg(option).scheduler
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = _optimizer()
        uninterrupted = build_scheduler(cfg, optimizer, epochs, STEPS)
        before = _lrs(optimizer, uninterrupted, 0, resume_at)
        saved = optimizer.state_dict()
        after = _lrs(optimizer, uninterrupted, resume_at, epochs * STEPS)

        # Resume as the trainer does: fresh optimizer + schedule, optimizer state, fast-forward.
        fresh = _optimizer()
        resumed = build_scheduler(cfg, fresh, epochs, STEPS)
        fresh.load_state_dict(saved)
        resumed.fast_forward(resume_at)
        continued = _lrs(fresh, resumed, resume_at, epochs * STEPS)
    assert continued == pytest.approx(after, rel=1e-12)
    assert len(before) + len(after) == epochs * STEPS
    # torch's "lr_scheduler.step() before optimizer.step()" warning means a skipped LR value.
    assert not [w for w in caught if "lr_scheduler.step" in str(w.message)]


class _TwoPart(nn.Module):
    """The two parts and the freeze switch of SkinLesionClassifier, without a timm backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def freeze_backbone(self, frozen: bool = True) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)


def _two_stage_lrs(cfg: DictConfig, resume_epoch: int | None) -> list[float]:
    """Per-update LRs of a two-stage run, with the trainer's own stage optimizers.

    With ``resume_epoch`` the run stops after that many epochs and continues with a rebuilt
    optimizer and schedule from the saved state, like ``train resume=<id>``.
    """
    model = _TwoPart()
    optimizers = StageOptimizers(cfg, model, STEPS)
    used: list[float] = []
    saved: dict | None = None
    for epoch in range(cfg.trainer.max_epochs):
        if epoch == resume_epoch:
            optimizers = StageOptimizers(cfg, model, STEPS, start_epoch=epoch, resume=saved)
        step = optimizers.for_epoch(epoch)
        first = step.first_update
        used += _lrs(step.optimizer, step.scheduler, first, first + STEPS)
        saved = {"stage": step.stage, "optimizer": step.optimizer.state_dict()}
    return used


@pytest.mark.parametrize("option", ["cosine_warmup", "onecycle"])
@pytest.mark.parametrize("resume_epoch", [1, 2, 4])  # inside stage 1, at the switch, in stage 2
def test_two_stage_resume_matches_an_uninterrupted_run(option: str, resume_epoch: int) -> None:
    cfg = _cfg(
        option,
        ["trainer.max_epochs=6", "trainer.freeze_backbone_epochs=2", "trainer.finetune_lr=1e-3"],
    )
    straight = _two_stage_lrs(cfg, None)
    # Each stage runs its own schedule: optimizer.lr in stage 1, trainer.finetune_lr in stage 2.
    assert max(straight[: 2 * STEPS]) == pytest.approx(BASE_LR, rel=0.02)
    assert max(straight[2 * STEPS :]) == pytest.approx(1e-3, rel=0.02)
    assert _two_stage_lrs(cfg, resume_epoch) == pytest.approx(straight, rel=1e-12)
