"""Heads: the contract every conf/model/head option keeps, output shapes, layer layout,
attention weights, any spatial size."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from derm_exp.config import CONF_DIR
from derm_exp.models.heads.acrnn import ACRNNHead
from derm_exp.models.heads.simple import SimpleHead

HEAD_YAMLS = sorted((CONF_DIR / "model" / "head").glob("*.yaml"))


def _acrnn(**kw) -> ACRNNHead:
    args = dict(
        in_channels=16,
        num_classes=7,
        conv_channels=8,
        kernel_size=3,
        hidden_size=6,
        num_layers=1,
        bidirectional=True,
        attention_dim=5,
        dropout=0.3,
    )
    return ACRNNHead(**(args | kw))


@pytest.mark.parametrize("hw", [(1, 1), (3, 5)])
@pytest.mark.parametrize("path", HEAD_YAMLS, ids=lambda p: p.stem)
def test_every_head_option_keeps_the_head_contract(path, hw):
    # README "How to extend": built as build_model does, from the option's own keys plus
    # in_channels (the backbone's num_features) and num_classes; the backbone's (B, C, H, W)
    # feature map of any spatial size -> (B, num_classes) logits, trainable in train mode.
    head = instantiate(OmegaConf.load(path), in_channels=24, num_classes=5).train()
    assert isinstance(head, nn.Module)
    logits = head(torch.randn(2, 24, *hw))
    assert logits.shape == (2, 5)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert head.eval()(torch.randn(1, 24, *hw)).shape == (1, 5)


def test_simple_head_layout_and_shape():
    head = SimpleHead(16, 7, hidden_dims=OmegaConf.create([512, 256]), dropout=0.3)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [
        nn.Dropout, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear,
    ]  # fmt: skip
    dims = [(m.in_features, m.out_features) for m in head.mlp if isinstance(m, nn.Linear)]
    assert dims == [(16, 512), (512, 256), (256, 7)]
    assert all(m.p == 0.3 for m in head.mlp if isinstance(m, nn.Dropout))
    assert head(torch.randn(4, 16, 3, 3)).shape == (4, 7)


def test_simple_head_without_hidden_layers_is_linear_probe():
    head = SimpleHead(16, 3, hidden_dims=[], dropout=0.0)
    assert [type(m) for m in head.mlp] == [nn.Dropout, nn.Linear]
    assert head(torch.randn(2, 16, 1, 1)).shape == (2, 3)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (7, 7)])
def test_acrnn_any_spatial_size_and_attention_distribution(hw):
    head = _acrnn().eval()
    x = torch.randn(3, 16, *hw)
    logits, attn = head(x, return_attention=True)
    assert logits.shape == (3, 7)
    assert attn.shape == (3, hw[0] * hw[1])
    assert torch.all(attn >= 0)
    torch.testing.assert_close(attn.sum(1), torch.ones(3))
    assert torch.equal(head.last_attention, attn.detach())
    assert not head.last_attention.requires_grad


def test_acrnn_attention_depends_on_input():
    torch.manual_seed(0)
    head = _acrnn().eval()
    head(torch.randn(2, 16, 4, 4))
    first = head.last_attention.clone()
    head(torch.randn(2, 16, 4, 4) * 3)
    assert not torch.allclose(first, head.last_attention)
    assert not torch.allclose(first, torch.full_like(first, 1 / 16))  # not uniform pooling


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    "kw", [dict(bidirectional=False, num_layers=2), dict(kernel_size=2), dict(kernel_size=1)]
)
def test_acrnn_variants(kw):
    head = _acrnn(**kw)
    assert head(torch.randn(2, 16, 2, 3)).shape == (2, 7)


def test_acrnn_gradients_reach_every_parameter_and_channels_last_matches():
    head = _acrnn(dropout=0.0)
    x = torch.randn(2, 16, 4, 4)
    head(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    head.eval()
    torch.testing.assert_close(head(x.to(memory_format=torch.channels_last)), head(x))
