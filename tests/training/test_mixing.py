"""Mixup/cutmix factory from conf/augment."""

import pytest
import torch
from omegaconf import OmegaConf
from timm.data import Mixup

from derm_exp.config import CONF_DIR
from derm_exp.training.mixing import build_mixup


@pytest.mark.parametrize("name", ["none", "light", "medium", "domain"])
def test_disabled_configs_give_none(name):
    assert build_mixup(OmegaConf.load(CONF_DIR / f"augment/{name}.yaml"), 7) is None


def test_zero_alphas_give_none_even_with_prob():
    cfg = OmegaConf.create({"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0})
    assert build_mixup(cfg, 7) is None


def test_heavy_gives_mixup_with_soft_targets():
    cfg = OmegaConf.load(CONF_DIR / "augment/heavy.yaml")
    mixup = build_mixup(cfg, 7)
    assert isinstance(mixup, Mixup)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob) == (0.2, 1.0, 0.5)
    assert mixup.label_smoothing == 0.0
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 6, 2])  # batch size must be even
    mixed_x, soft = mixup(x, y)
    assert mixed_x.shape == x.shape
    assert soft.shape == (4, 7)
    assert torch.all(soft >= 0)
    torch.testing.assert_close(soft.sum(1), torch.ones(4))
