"""Run a model for explanations in fp32 eval mode and give it back exactly as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, fp32, no autocast, parameters frozen; all restored on exit.

    Every module's own ``training`` flag and every parameter's ``requires_grad`` are put back
    (a frozen backbone stays frozen), and a non-fp32 model is cast back to its dtype. The
    gradients explanations need are taken with respect to inputs and activations only
    (``torch.autograd.grad``), so no parameter ``.grad`` is written. cuDNN is off inside: its
    LSTM (the ``acrnn`` head) refuses a backward pass in eval mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    try:
        if dtype != torch.float32:
            model.float()
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        device_type = param.device.type if param is not None else "cpu"
        with (
            torch.autocast(device_type, enabled=False),
            torch.backends.cudnn.flags(enabled=False),
            torch.inference_mode(False),
            torch.enable_grad(),
        ):
            yield model
    finally:
        if dtype != torch.float32:
            model.to(dtype)
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
