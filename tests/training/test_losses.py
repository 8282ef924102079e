"""Losses: focal loss reference values and the criterion factory for every conf/loss option."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from derm_exp.config import CONF_DIR
from derm_exp.training.losses import FocalLoss, build_criterion
from derm_exp.training.mixing import build_mixup

LOSS_YAMLS = sorted((CONF_DIR / "loss").glob("*.yaml"))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(6, 4) * 2, torch.tensor([0, 1, 2, 3, 1, 1])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_gamma_zero_equals_cross_entropy(batch, smoothing, weighted):
    logits, y = batch
    w = torch.tensor([1.0, 0.5, 2.0, 3.0]) if weighted else None
    expected = F.cross_entropy(logits, y, weight=w, label_smoothing=smoothing)
    got = FocalLoss(weight=w, gamma=0.0, label_smoothing=smoothing)(logits, y)
    torch.testing.assert_close(got, expected)


def test_hand_computed_focal_value():
    # sample 1: p = (0.25, 0.75), y=1 -> 0.25^2 * -ln 0.75; sample 2: p = (0.5, 0.5), y=0
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    y = torch.tensor([1, 0])
    expected = (0.0625 * -math.log(0.75) + 0.25 * math.log(2.0)) / 2  # = 0.0956336
    got = FocalLoss(gamma=2.0)(logits, y)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() == pytest.approx(0.0956336, abs=1e-6)
    weighted = FocalLoss(weight=torch.tensor([3.0, 1.0]), gamma=2.0)(logits, y)
    w_expected = (0.0625 * -math.log(0.75) + 3 * 0.25 * math.log(2.0)) / 4
    assert weighted.item() == pytest.approx(w_expected, rel=1e-6)


@pytest.mark.parametrize("gamma,smoothing", [(2.0, 0.0), (1.5, 0.1), (0.0, 0.2)])
def test_soft_one_hot_equals_hard(batch, gamma, smoothing):
    logits, y = batch
    loss = FocalLoss(
        weight=torch.tensor([1.0, 2.0, 0.5, 1.0]), gamma=gamma, label_smoothing=smoothing
    )
    torch.testing.assert_close(loss(logits, F.one_hot(y, 4).float()), loss(logits, y))


def test_soft_targets_without_weight_match_cross_entropy_when_gamma_zero(batch):
    logits, _ = batch
    q = torch.softmax(torch.randn(6, 4), 1)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, q), F.cross_entropy(logits, q))


def test_focal_downweights_easy_examples_and_is_finite():
    logits = torch.tensor([[30.0, -30.0], [0.1, 0.0]], requires_grad=True)
    per_sample = FocalLoss(gamma=0.5, reduction="none")(logits, torch.tensor([0, 0]))
    ce = F.cross_entropy(logits, torch.tensor([0, 0]), reduction="none")
    assert torch.all(per_sample <= ce)
    per_sample.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_weight_follows_device_moves_and_state_dict():
    loss = FocalLoss(weight=torch.tensor([1.0, 2.0]))
    assert "weight" in loss.state_dict()
    assert loss.to(torch.float64).weight.dtype == torch.float64


@pytest.mark.parametrize("path", LOSS_YAMLS, ids=lambda p: p.stem)
def test_every_loss_config_builds(path):
    cfg = OmegaConf.load(path)
    weights = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 3.0])
    for w in (None, weights):
        criterion = build_criterion(cfg, w)
        assert isinstance(criterion, nn.Module)
        logits, y = torch.randn(4, 7), torch.tensor([0, 6, 3, 1])
        assert torch.isfinite(criterion(logits, y))
        assert torch.isfinite(criterion(logits, F.one_hot(y, 7).float()))
        if w is not None:
            assert torch.equal(criterion.weight, weights)


def _mixed_batch() -> tuple[torch.Tensor, torch.Tensor, float]:
    """Labels, their mixup/cutmix targets from augment=heavy (every batch mixed) and lambda."""
    np.random.seed(0)  # timm draws lambda and mixup-or-cutmix with numpy
    torch.manual_seed(0)
    augment = OmegaConf.load(CONF_DIR / "augment" / "heavy.yaml")
    augment.mix_prob = 1.0
    y = torch.tensor([0, 3, 6, 2])  # y[i] != y.flip(0)[i]: lambda is soft[0, y[0]]
    _, soft = build_mixup(augment, 7)(torch.randn(4, 3, 16, 16), y)
    lam = float(soft[0, y[0]])
    assert 0.0 < lam < 1.0
    return y, soft, lam


@pytest.mark.parametrize("path", LOSS_YAMLS, ids=lambda p: p.stem)
def test_every_loss_config_takes_mixed_soft_targets(path):
    # README "How to extend": training calls criterion(logits, targets) with (B, C) mixup/cutmix
    # probabilities; a mixed target must give the same mixture of the two hard-label losses.
    y, soft, lam = _mixed_batch()
    criterion = build_criterion(OmegaConf.load(path))
    logits = torch.randn(4, 7, requires_grad=True)
    loss = criterion(logits, soft)
    expected = lam * criterion(logits, y) + (1.0 - lam) * criterion(logits, y.flip(0))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("path", LOSS_YAMLS, ids=lambda p: p.stem)
def test_every_loss_config_weights_classes_with_soft_targets(path):
    _, soft, _ = _mixed_batch()
    cfg = OmegaConf.load(path)
    logits = torch.randn(4, 7)
    weights = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 3.0])
    weighted = build_criterion(cfg, weights)(logits, soft)
    assert torch.isfinite(weighted)
    assert not torch.allclose(weighted, build_criterion(cfg)(logits, soft))
