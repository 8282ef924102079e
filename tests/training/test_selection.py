"""Checkpoint selection: ties, raw vs EMA, constant models (unit + one tiny training run)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, open_dict

from derm_exp.data.metadata import CLASSES
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.training.selection import (
    Score,
    dominant_share,
    is_better,
    is_degenerate,
    warn_if_degenerate,
)
from derm_exp.training.trainer import fit


def test_higher_metric_wins_and_first_score_is_kept() -> None:
    assert is_better(Score(0.3, 1.0), None)
    assert is_better(Score(0.4, 9.0, "raw"), Score(0.3, 1.0, "ema"))
    assert not is_better(Score(0.3, 1.0, "ema"), Score(0.4, 9.0, "raw"))


def test_flat_metric_moves_on_lower_loss() -> None:
    # 1/7 balanced accuracy for several epochs: the falling loss must still move "best"
    old = Score(1 / 7, 1.9, "ema", epoch=0)
    assert is_better(Score(1 / 7, 1.2, "raw", epoch=1), old)
    assert not is_better(Score(1 / 7, 1.9, "raw", epoch=1), old)
    assert not is_better(Score(1 / 7, 2.5, "raw", epoch=1), old)


def test_min_mode_inverts_the_metric() -> None:
    assert is_better(Score(0.5, 1.0), Score(0.7, 1.0), mode="min")
    assert not is_better(Score(0.7, 1.0), Score(0.5, 1.0), mode="min")


def test_raw_weights_win_when_ema_is_worse() -> None:
    raw = Score(0.42, 1.1, "raw", epoch=3)
    ema = Score(1 / 7, 1.9, "ema", epoch=3)
    assert is_better(raw, ema)
    assert not is_better(ema, raw)


def test_a_constant_model_never_beats_one_that_separates_classes() -> None:
    constant = Score(0.30, 0.8, "ema", degenerate=True)
    learning = Score(0.20, 1.5, "raw")
    assert is_better(learning, constant)
    assert not is_better(constant, learning)
    assert is_better(Score(0.31, 0.9, degenerate=True), constant)  # both constant: metric decides


def test_score_round_trips_through_a_checkpoint_dict() -> None:
    score = Score(0.5, 1.0, "ema", 4, True)
    assert Score(**score.as_dict()) == score
    old_format = {"value": 0.5, "loss": 1.0, "weights": "raw", "epoch": 2}
    assert Score(**old_format).degenerate is False


def test_dominant_share_and_degenerate_threshold() -> None:
    assert dominant_share(np.array([], dtype=int)) == 0.0
    assert dominant_share(np.full(10, 5)) == 1.0
    assert not is_degenerate(np.array([], dtype=int))
    assert is_degenerate(np.array([5] * 95 + [0] * 5))
    assert not is_degenerate(np.array([5] * 94 + [0] * 6))


def test_warning_fires_on_a_constant_model(caplog: pytest.LogCaptureFixture) -> None:
    nv = CLASSES.index("nv")
    with caplog.at_level(logging.WARNING, logger="derm_exp.training.selection"):
        assert warn_if_degenerate(np.full(50, nv), list(CLASSES), "unit test")
    assert "DEGENERATE MODEL (unit test)" in caplog.text
    assert "100.0%" in caplog.text and "'nv'" in caplog.text


def test_no_warning_for_a_model_that_varies(caplog: pytest.LogCaptureFixture) -> None:
    predictions = np.arange(70) % len(CLASSES)
    with caplog.at_level(logging.WARNING, logger="derm_exp.training.selection"):
        assert not warn_if_degenerate(predictions, list(CLASSES), "unit test")
    assert "DEGENERATE" not in caplog.text


def test_trainer_keeps_raw_weights_when_ema_stays_at_init(
    tiny_cfg: DictConfig, tmp_path: Path
) -> None:
    # decay 0.9999 without warm-up: the EMA copy barely leaves its initialisation
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.ema.decay = 0.9999
        tiny_cfg.trainer.ema.warmup = False
        tiny_cfg.optimizer.lr = 3e-3
        tiny_cfg.registry.enabled = False
    fit(tiny_cfg, tmp_path / "out")
    best = load_checkpoint(tmp_path / "out" / "checkpoint_best.pt")
    latest = load_checkpoint(tmp_path / "out" / "checkpoint_latest.pt")
    assert best["weights"] == "raw"
    assert best["best"]["weights"] == "raw"
    history = latest["history"]
    assert history["val/uses_ema"] == [0.0] * len(history["epoch"])
    # Both weights' figures every epoch: every history list has one value per epoch.
    assert {len(v) for v in history.values()} == {len(history["epoch"])}
    assert history["val_raw/loss"] == history["val/loss"]
    assert len(history["val_ema/loss"]) == len(history["epoch"])
