"""Post-hoc logit adjustment (derm_exp/training/logit_adjustment.py): the training class mix,
the validation fit of tau, the fold into the head's output bias, config errors, and a tiny run
that stores it in the checkpoint and MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from derm_exp.errors import ConfigError
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.models.classifier import build_model
from derm_exp.training.logit_adjustment import (
    adjust_on_validation,
    fit_tau,
    log_prior_offsets,
    training_prior,
)
from derm_exp.training.validate import validate_config
from tests.conftest import compose_train
from tests.tiny import TINY_MODEL


def _cfg(*extra: str) -> DictConfig:
    return compose_train([*TINY_MODEL, "trainer.logit_adjustment.enabled=true", *extra])


def test_training_prior_follows_the_sampler_and_the_loss_weights() -> None:
    labels = np.repeat([0, 1, 2], [100, 25, 4])
    np.testing.assert_allclose(training_prior(labels, 4, None), [100 / 129, 25 / 129, 4 / 129, 0])
    np.testing.assert_allclose(training_prior(labels, 4, 0.5), [10 / 17, 5 / 17, 2 / 17, 0])
    np.testing.assert_allclose(training_prior(labels, 4, 1.0), [1 / 3, 1 / 3, 1 / 3, 0])
    weighted = training_prior(labels, 4, 0.5, loss_weights=[1.0, 2.0, 5.0, 1.0])
    np.testing.assert_allclose(weighted, [10 / 30, 10 / 30, 10 / 30, 0])
    offsets = log_prior_offsets(training_prior(labels, 4, None))
    assert offsets[3] == 0.0 and abs(offsets[:3].sum()) < 1e-12


def test_fit_tau_undoes_a_skewed_training_prior() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 200)
    evidence = 1.5 * np.eye(4)[labels] + rng.normal(0.0, 1.0, (800, 4))
    log_prior = log_prior_offsets(np.array([0.7, 0.2, 0.07, 0.03]))
    skewed = evidence + log_prior  # what a model trained on that mix scores
    grid = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    tau, scores = fit_tau(skewed, labels, log_prior, grid)
    assert tau >= 0.75
    assert scores[tau] > scores[0.0] + 0.05
    # A uniform mix has nothing to undo: every tau scores the same, the smallest wins.
    flat = log_prior_offsets(np.full(4, 0.25))
    assert fit_tau(evidence, labels, flat, grid)[0] == 0.0


@pytest.mark.parametrize("head", ["simple", "acrnn"])
def test_the_offsets_are_folded_into_the_output_bias(head: str) -> None:
    cfg = _cfg(f"model/head={head}", "trainer.logit_adjustment.tau=1.0", "data.sampler=weighted")
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=7, image_size=32).eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        before = model(x).numpy()
    train_labels = np.repeat(np.arange(7), [30, 50, 100, 10, 100, 600, 12])
    adjusted, summary = adjust_on_validation(cfg, model, before, np.arange(6) % 7, train_labels)
    with torch.no_grad():
        after = model(x).numpy()
    expected = -1.0 * log_prior_offsets(training_prior(train_labels, 7, 0.5))
    np.testing.assert_allclose(summary["offsets"], expected, atol=1e-12)
    np.testing.assert_allclose(after, before + expected, atol=1e-5)
    np.testing.assert_allclose(adjusted, after, atol=1e-5)
    assert summary["tau"] == 1.0 and expected[5] < 0 < expected[3]  # nv down, df up


def test_disabled_leaves_the_model_alone() -> None:
    cfg = compose_train([*TINY_MODEL])
    model = build_model(cfg.model, num_classes=7, image_size=32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logits = np.zeros((3, 7), dtype=np.float32)
    out, summary = adjust_on_validation(cfg, model, logits, np.zeros(3), np.arange(7))
    assert summary is None and out is logits
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_head_without_an_output_bias_is_refused() -> None:
    cfg = _cfg()
    model = nn.Module()
    model.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 7, bias=False))
    with pytest.raises(ConfigError, match="logit_adjustment.enabled=false"):
        adjust_on_validation(cfg, model, np.zeros((2, 7)), np.zeros(2), np.arange(7))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.logit_adjustment.tau=half", "logit_adjustment.tau='half'"),
        ("trainer.logit_adjustment.tau_grid=[]", "tau_grid"),
        ("trainer.logit_adjustment.enabled=maybe", "logit_adjustment.enabled"),
    ],
)
def test_bad_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_train([override]))


def test_a_run_stores_and_logs_the_adjustment(tiny_cfg: DictConfig, tmp_path: Path) -> None:
    from derm_exp.training.trainer import fit

    with open_dict(tiny_cfg):
        tiny_cfg.trainer.logit_adjustment.enabled = True
        tiny_cfg.data.sampler = "weighted"
    fit(tiny_cfg, tmp_path / "out")
    ck = load_checkpoint(tmp_path / "out" / "checkpoint_best.pt")
    adjustment = ck["logit_adjustment"]
    assert adjustment["tau"] in list(tiny_cfg.trainer.logit_adjustment.tau_grid)
    scores = adjustment["val_balanced_accuracy"]
    assert scores["after"] == max(adjustment["tau_scores"].values()) >= scores["before"]
    mlflow.set_tracking_uri(tiny_cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=[tiny_cfg.tracking.experiment_name]).iloc[0]
    assert run["metrics.logit_adjustment/tau"] == adjustment["tau"]
    local = mlflow.artifacts.download_artifacts(
        run_id=run["run_id"], artifact_path="evaluation/logit_adjustment.json"
    )
    assert Path(local).is_file()


def test_the_model_card_shows_the_adjustment() -> None:
    from derm_exp.service.model_card import _logit_adjustment

    assert _logit_adjustment({}) is None
    stored = {"tau": 0.5, "training_prior": [0.5, 0.5], "offsets": [0.1, -0.1]}
    assert _logit_adjustment({"logit_adjustment": stored}) == {
        "tau": 0.5,
        "training_prior": [0.5, 0.5],
    }
