"""Find the layer Grad-CAM should look at: the last feature map that feeds the pooling.

Found from the model itself, for any timm backbone, so no hand-kept table of layer names is
needed. timm's ``feature_info`` names the last *stage* of a backbone, which for EfficientNets is
not the map the head sees (``conv_head`` + ``bn2`` follow it: 192 vs 1280 channels for
tf_efficientnetv2_b0), so the layer is found by one probe forward instead: the last module of the
backbone whose output is the backbone's final (B, C, h, w) feature map. That is ``bn2`` for
timm's EfficientNets (its activation included) and ``layer4`` for ResNets; identity modules
(timm's empty ``global_pool``) are skipped.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

# model -> the target layer's name: found once per model (one probe forward), not per call.
_FOUND: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def feature_source(model: nn.Module) -> nn.Module:
    """The part of ``model`` that makes the feature map: a derm_exp classifier's ``backbone``."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def find_target_layer(
    model: nn.Module, image_size: int | tuple[int, int] = 64
) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer whose output is the final spatial feature map.

    One forward of a zero image of ``image_size`` (no gradients) records, in completion order,
    every backbone module that returns a 4-D tensor; the last one that is not an identity (its
    output the very tensor it got) is the target. Hooks are removed before returning. The name
    is remembered per model object.
    """
    source = feature_source(model)
    if model in _FOUND:
        return _FOUND[model], source.get_submodule(_FOUND[model])
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    order: list[tuple[str, tuple[int, ...]]] = []
    names = {id(m): n for n, m in source.named_modules() if m is not source}

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            return
        if inputs and inputs[0] is output:  # identity: the same map under another name
            return
        order.append((names[id(module)], tuple(output.shape)))

    handles = [m.register_forward_hook(hook) for m in source.modules() if m is not source]
    was_training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.no_grad():
            x = torch.zeros(1, 3, h, w, device=device, dtype=dtype)
            final = source.forward_features(x) if hasattr(source, "forward_features") else None
            if final is None:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in was_training:
            module.training = mode
    wanted = tuple(final.shape) if final is not None else None
    found = [name for name, shape in order if wanted is None or shape == wanted]
    if not found:
        raise RuntimeError(f"no 4-D feature map found in {type(source).__name__}")
    name = found[-1]
    _FOUND[model] = name
    return name, source.get_submodule(name)
