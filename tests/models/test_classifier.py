"""Classifier: config compositions, gradients, freezing, channels_last, data config."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from derm_exp.config import CONF_DIR
from derm_exp.models.backbone import _has_pretrained_source, check_model_name
from derm_exp.models.classifier import SkinLesionClassifier, build_model, resolve_data_config

MODEL_YAMLS = sorted((CONF_DIR / "model").glob("*.yaml"))
HEAD_YAMLS = sorted((CONF_DIR / "model" / "head").glob("*.yaml"))
CHEAP = {"test_efficientnet", "tf_efficientnetv2_b0"}  # built; bigger ones: config checks only
NUM_CLASSES = 7


def _cfg(model_yaml: Path, head_yaml: Path):
    cfg = OmegaConf.load(model_yaml)
    cfg.head = OmegaConf.load(head_yaml)
    return cfg


def _tiny(head: str = "simple"):
    return build_model(_cfg(CONF_DIR / "model/tiny.yaml", CONF_DIR / f"model/head/{head}.yaml"), 7)


def test_config_files_exist():
    assert {p.stem for p in HEAD_YAMLS} >= {"simple", "acrnn"}
    assert len(MODEL_YAMLS) >= 5


@pytest.mark.parametrize("head_yaml", HEAD_YAMLS, ids=lambda p: p.stem)
@pytest.mark.parametrize("model_yaml", MODEL_YAMLS, ids=lambda p: p.stem)
def test_every_model_head_composition(model_yaml, head_yaml):
    cfg = _cfg(model_yaml, head_yaml)
    assert {"name", "pretrained", "pretrained_file", "drop_rate", "drop_path_rate"} <= set(cfg)
    check_model_name(cfg.name)
    assert _has_pretrained_source(cfg.name)  # pretrained=true would find hub weights
    if cfg.name not in CHEAP:
        head = instantiate(cfg.head, in_channels=1280, num_classes=NUM_CLASSES)
        assert head(torch.randn(2, 1280, 2, 2)).shape == (2, NUM_CLASSES)
        return
    model = build_model(cfg, NUM_CLASSES, image_size=64).eval()
    assert isinstance(model, SkinLesionClassifier)
    assert model.data_config["input_size"] == (3, 64, 64)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("head", ["simple", "acrnn"])
def test_gradients_flow_to_backbone_and_head(head):
    model = _tiny(head).train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    for params in (model.backbone_parameters(), model.head_parameters()):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    ids = {id(p) for p in model.backbone_parameters() + model.head_parameters()}
    assert ids == {id(p) for p in model.parameters()}


def test_freeze_backbone_toggles_grads_and_keeps_bn_eval():
    model = _tiny("acrnn")
    model.freeze_backbone(True)
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert model.head.training
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    stats = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(stats, bns[0].running_mean)
    assert all(p.grad is None for p in model.backbone_parameters())

    model.freeze_backbone(False)
    assert all(m.training for m in bns)
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("head", ["simple", "acrnn"])
def test_channels_last_matches_contiguous(head):
    model = _tiny(head).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected)


def test_data_config_defaults_and_resolution():
    model = _tiny()
    assert model.data_config["input_size"] == (3, 160, 160)
    assert resolve_data_config(model, 48)["input_size"] == (3, 48, 48)
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 256, 2, 2)
