"""Backbone creation: feature maps, name errors, offline pretrained failures, local weights."""

import socket
import time

import pytest
import safetensors.torch
import timm
import torch

from derm_exp.models import backbone as bb
from derm_exp.models.backbone import (
    PretrainedFileNotFoundError,
    PretrainedWeightsError,
    UnknownModelError,
    create_backbone,
    resolve_data_config,
)

TINY = "test_efficientnet"


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    """A random-init test_efficientnet state_dict (with classifier) as .pth and .safetensors."""
    torch.manual_seed(123)
    sd = timm.create_model(TINY).state_dict()
    out = tmp_path_factory.mktemp("weights")
    torch.save(sd, out / "w.pth")
    safetensors.torch.save_file(sd, out / "w.safetensors")
    return sd, out


@pytest.fixture
def offline(monkeypatch):
    """No HF cache hit, and timm must not be reached (it would hang retrying downloads)."""
    monkeypatch.setattr(bb, "_cached_hub_weights", lambda name: None)

    def _no_timm(*a, **k):
        raise AssertionError("timm.create_model must not be called when offline")

    monkeypatch.setattr(bb.timm, "create_model", _no_timm)


def _assert_fix_hint(message: str) -> None:
    assert "model.pretrained_file=" in message
    assert "model.pretrained=false" in message
    assert "go online" in message


def test_feature_map_without_pooling_or_classifier():
    model = create_backbone(TINY, drop_rate=0.1, drop_path_rate=0.05).eval()
    assert model.num_features == 256
    assert model.drop_rate == 0.1
    assert model.forward_features(torch.randn(2, 3, 64, 64)).shape == (2, 256, 2, 2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 256, 1, 1)  # global_pool=''


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="tf_efficientnetv2_b0"):
        create_backbone("tf_efficientnetv2_bo")
    with pytest.raises(UnknownModelError, match="in21k_ft_in1k"):
        create_backbone("tf_efficientnetv2_s.bogus")


def test_pretrained_with_hf_hub_offline_fails_fast(monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE") as err:
        create_backbone(TINY, pretrained=True)
    assert time.monotonic() - start < 10
    _assert_fix_hint(str(err.value))


def test_pretrained_fails_fast_when_probe_fails(monkeypatch, offline):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    probed = []

    def _refuse(address, timeout=None):
        probed.append((address, timeout))
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", _refuse)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match="not reachable") as err:
        create_backbone(TINY, pretrained=True)
    assert time.monotonic() - start < 10
    assert probed and probed[0][0][1] == 443 and probed[0][1] <= 5
    _assert_fix_hint(str(err.value))


def test_offline_uses_weights_already_in_hf_cache(monkeypatch, saved_weights):
    sd, folder = saved_weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(bb, "_cached_hub_weights", lambda name: folder / "w.safetensors")
    model = create_backbone(TINY, pretrained=True)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_probe_is_bounded_even_when_dns_hangs(monkeypatch):
    def _hang(*args, **kwargs):
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", _hang)
    start = time.monotonic()
    assert not bb.hub_reachable(timeout=0.2)
    assert time.monotonic() - start < 2


def test_online_download_goes_through_timm_and_wraps_errors(monkeypatch):
    monkeypatch.setattr(bb, "_offline_env", lambda: False)
    monkeypatch.setattr(bb, "hub_reachable", lambda timeout=3.0: True)
    calls = []

    def _fail(name, **kwargs):
        calls.append((name, kwargs))
        raise OSError("connection reset")

    monkeypatch.setattr(bb.timm, "create_model", _fail)
    with pytest.raises(PretrainedWeightsError, match="connection reset") as err:
        create_backbone(TINY, pretrained=True, drop_path_rate=0.1)
    _assert_fix_hint(str(err.value))
    assert calls == [
        (TINY, dict(pretrained=True, num_classes=0, global_pool="", drop_rate=0.0,
                    drop_path_rate=0.1)),
    ]  # fmt: skip


def test_model_without_published_weights_refuses_pretrained():
    with pytest.raises(PretrainedWeightsError, match="no pretrained weights"):
        create_backbone("efficientnetv2_s", pretrained=True)


@pytest.mark.parametrize("filename", ["w.pth", "w.safetensors"])
def test_local_pretrained_file_loads_offline(monkeypatch, saved_weights, filename):
    sd, folder = saved_weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = create_backbone(TINY, pretrained=True, pretrained_file=folder / filename)
    state = model.state_dict()
    assert set(sd) - set(state) == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(v, sd[k]) for k, v in state.items())
    assert "state_dict" not in model.pretrained_cfg  # no second copy of the weights kept
    assert model.pretrained_cfg["file"] == str(folder / filename)


def test_pretrained_file_wrapped_or_from_a_classifier_checkpoint(tmp_path, saved_weights):
    sd, _ = saved_weights
    torch.save({"model": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "ckpt.pt")
    model = create_backbone(TINY, pretrained_file=tmp_path / "ckpt.pt")
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_missing_pretrained_file(tmp_path):
    with pytest.raises(PretrainedFileNotFoundError, match="does not exist") as err:
        create_backbone(TINY, pretrained_file=tmp_path / "nope.safetensors")
    assert isinstance(err.value, FileNotFoundError)


def test_pretrained_file_of_wrong_architecture(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsError, match="exact architecture"):
        create_backbone(TINY, pretrained_file=path)
    other = tmp_path / "b.safetensors"
    safetensors.torch.save_file({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(PretrainedWeightsError, match="weights are missing"):
        create_backbone(TINY, pretrained_file=other)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="Could not read"):
        create_backbone(TINY, pretrained_file=tmp_path / "junk.pth")


def test_resolve_data_config_plain_types():
    model = create_backbone(TINY)
    cfg = resolve_data_config(model, None)
    assert cfg == {
        "input_size": (3, 160, 160),
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 0.95,
        "crop_mode": "center",
    }
    assert resolve_data_config(model, 64)["input_size"] == (3, 64, 64)
    assert all(type(v) is float for v in cfg["mean"] + cfg["std"])
