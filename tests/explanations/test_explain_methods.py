"""explain_batch: maps of the right shape and range for every method, backbone and head; the
model left as it was; clear errors for methods that do not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derm_exp.errors import UserError
from derm_exp.explanations import METHODS, ExplanationError, explain_batch, find_target_layer
from tests.explanations.conftest import TOY_CLASSES, make_model, toy_batch


def _hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("name", ["test_efficientnet", "resnet10t"])
@pytest.mark.parametrize("head", ["simple", "acrnn"])
def test_maps_shape_range_for_backbones_and_heads(name: str, head: str) -> None:
    model = make_model(name, head)
    x = torch.randn(2, 3, 64, 64)
    methods = [m for m in METHODS if m != "attention" or head == "acrnn"]
    for method in methods:
        maps = explain_batch(model, x, method=method)
        assert maps.shape == (2, 64, 64) and maps.dtype == np.float32, method
        assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0, method
        if method != "gradcam":  # a random net's Grad-CAM may be ReLU'd to 0 everywhere
            assert (maps.reshape(2, -1).max(1) > 0.0).all(), method


@pytest.mark.parametrize(
    ("name", "layer"),
    [("test_efficientnet", "bn2"), ("resnet10t", "layer4"), ("tf_efficientnetv2_b0", "bn2")],
)
def test_target_layer_is_the_map_that_feeds_the_head(name: str, layer: str) -> None:
    model = make_model(name)
    found, module = find_target_layer(model, 64)
    assert found == layer and module is model.backbone.get_submodule(layer)
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert seen[0].shape == features.shape and torch.equal(seen[0], features)


def test_maps_are_at_the_batch_resolution() -> None:
    maps = explain_batch(make_model(), torch.randn(1, 3, 96, 80), method="gradcam")
    assert maps.shape == (1, 96, 80)


def test_model_is_left_unchanged(toy_model: torch.nn.Module) -> None:
    toy_model.train()
    toy_model.backbone.conv_stem.weight.requires_grad_(False)  # one frozen parameter stays so
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    flags = [p.requires_grad for p in toy_model.parameters()]
    x, _ = toy_batch(4, seed=5)
    try:
        for method in ("gradcam", "integrated_gradients"):
            explain_batch(toy_model, x, method=method)
        assert toy_model.training and all(m.training for m in toy_model.modules())
        assert [p.requires_grad for p in toy_model.parameters()] == flags
        assert _hooks(toy_model) == 0
        assert all(p.grad is None for p in toy_model.parameters())  # no gradient written
        after = toy_model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched
    finally:
        toy_model.backbone.conv_stem.weight.requires_grad_(True)
        toy_model.eval()


def test_explanations_run_in_fp32_and_restore_the_dtype() -> None:
    model = make_model().to(torch.float64)
    maps = explain_batch(model, torch.randn(1, 3, 64, 64), method="gradcam")
    assert maps.dtype == np.float32
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_gradcam_finds_the_square_of_the_trained_toy_model(toy_model: torch.nn.Module) -> None:
    x, y = toy_batch(8, seed=7)
    with torch.no_grad():
        assert (toy_model(x).argmax(1) == y).float().mean() >= 0.75  # it learned the toy task
    maps = explain_batch(toy_model, x, method="integrated_gradients", targets=y.tolist())
    inside = []
    for m, label in zip(maps, y.tolist(), strict=True):
        top, left = 8 + 32 * (label // 2), 8 + 32 * (label % 2)
        mask = np.zeros_like(m, dtype=bool)
        mask[top : top + 16, left : left + 16] = True
        inside.append(m[mask].mean() > m[~mask].mean())
    assert np.mean(inside) >= 0.75


def test_attention_needs_an_attention_head() -> None:
    with pytest.raises(ExplanationError, match="acrnn") as err:
        explain_batch(make_model(head="simple"), torch.randn(1, 3, 64, 64), method="attention")
    assert isinstance(err.value, UserError)


def test_attention_map_is_the_heads_own_weights(toy_acrnn: torch.nn.Module) -> None:
    x, _ = toy_batch(2, seed=3)
    maps = explain_batch(toy_acrnn, x, method="attention")
    with torch.no_grad():
        features = toy_acrnn.forward_features(x)
        _, weights = toy_acrnn.head(features, return_attention=True)
    h, w = features.shape[-2:]
    peak = weights.reshape(2, h, w)[0].flatten().argmax().item()
    py, px = divmod(peak, w)
    cell = maps[0].reshape(h, 64 // h, w, 64 // w).mean((1, 3))
    assert np.unravel_index(cell.argmax(), cell.shape) == (py, px)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "lime"}, "unknown explanation method"),
        ({"targets": [TOY_CLASSES]}, "out of range"),
        ({"targets": [0, 1]}, "2 targets for a batch of 1"),
    ],
)
def test_bad_requests_are_user_errors(toy_model: torch.nn.Module, kwargs, match) -> None:
    with pytest.raises(ExplanationError, match=match):
        explain_batch(toy_model, torch.randn(1, 3, 64, 64), **kwargs)


def test_threads_sharing_one_model_leave_it_unchanged() -> None:
    from concurrent.futures import ThreadPoolExecutor

    model = make_model(head="acrnn").eval()
    x = torch.randn(2, 3, 64, 64)
    methods = ["gradcam", "attention", "gradcam", "integrated_gradients"]
    with ThreadPoolExecutor(4) as pool:
        maps = list(pool.map(lambda m: explain_batch(model, x, method=m), methods))
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)  # same request, same map
    assert all(p.requires_grad for p in model.parameters()) and _hooks(model) == 0
    assert not model.training
