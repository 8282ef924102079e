"""A/B comparisons of training options on this machine, interleaved (A, B, A, B, ...) so that
drifting background load hits every variant alike: autocast dtype, AdamW implementation, and
optionally torch.compile (compile time included)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from derm_exp.perf.timing import median, sync


def _step_fn(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    dtype: torch.dtype | None,
    device: torch.device,
) -> Callable[[], None]:
    images = batch[0].to(device).contiguous(memory_format=torch.channels_last)
    targets = batch[1].to(device)
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(model(images).float(), targets)
        loss.backward()

    return step


def _interleaved(fns: dict[str, Callable[[], None]], device: torch.device, rounds: int) -> dict:
    """Median seconds per call of each function, called round-robin after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: median(ts) for name, ts in times.items()}


def compare_amp(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    rounds: int,
) -> dict[str, Any]:
    """Forward + backward (training mode) in fp32 vs bf16 autocast, and how far bf16 logits
    are from fp32 logits (eval mode, same batch)."""
    model.train()
    fns = {
        "fp32": _step_fn(model, batch, None, device),
        "bf16": _step_fn(model, batch, torch.bfloat16, device),
    }
    t = _interleaved(fns, device, rounds)
    model.eval()
    x = batch[0].to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = model(x).float()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x).float()
    model.zero_grad(set_to_none=True)
    return {
        "fp32_fwd_bwd_ms": t["fp32"] * 1000,
        "bf16_fwd_bwd_ms": t["bf16"] * 1000,
        "bf16_speedup": t["fp32"] / t["bf16"],
        "bf16_max_abs_logit_diff": float((low - ref).abs().max()),
        "fp32_max_abs_logit": float(ref.abs().max()),
        "bf16_argmax_agreement": float((low.argmax(1) == ref.argmax(1)).float().mean()),
    }


def compare_adamw(
    model: torch.nn.Module, device: torch.device, rounds: int, grad_clip_norm: float | None
) -> dict[str, Any]:
    """Gradient clipping + ``AdamW.step`` for torch's default choice, ``foreach`` and ``fused``,
    on copies of the model's parameters with random gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    variants: dict[str, dict[str, Any]] = {"default": {}, "foreach": {"foreach": True}}
    variants["fused"] = {"fused": True}
    fns = {}
    for name, kwargs in variants.items():
        copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for c in copies:
            c.grad = torch.randn_like(c) * 1e-3
        opt = torch.optim.AdamW(copies, lr=1e-4, weight_decay=0.05, **kwargs)

        def step(opt=opt, copies=copies) -> None:
            if grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(copies, grad_clip_norm)
            opt.step()

        fns[name] = step
    t = _interleaved(fns, device, rounds)
    return {
        "parameters_m": sum(p.numel() for p in params) / 1e6,
        "tensors": len(params),
        **{f"{name}_ms": v * 1000 for name, v in t.items()},
        "default_uses": _default_impl(params),
    }


def _default_impl(params: list[torch.Tensor]) -> str:
    """What ``torch.optim.AdamW`` picks when neither ``foreach`` nor ``fused`` is set."""
    try:  # private torch helper: the rule AdamW applies at its first step
        from torch.optim.optimizer import _default_to_fused_or_foreach

        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False)
    except (ImportError, TypeError):
        return "unknown"
    return "fused" if fused else "foreach" if foreach else "for-loop"


def compare_compile(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    rounds: int,
) -> dict[str, Any]:
    """Eager vs ``torch.compile`` forward + backward: compile time (first call) and step time,
    and how many steps pay the compile time back."""
    eager = copy.deepcopy(model).train()
    compiled_model = torch.compile(copy.deepcopy(model).train())
    start = time.perf_counter()
    compiled = _step_fn(compiled_model, batch, None, device)
    compiled()
    sync(device)
    first = time.perf_counter() - start
    fns = {"eager": _step_fn(eager, batch, None, device), "compiled": compiled}
    t = _interleaved(fns, device, rounds)
    saved = t["eager"] - t["compiled"]
    return {
        "compile_first_step_s": first,
        "eager_fwd_bwd_ms": t["eager"] * 1000,
        "compiled_fwd_bwd_ms": t["compiled"] * 1000,
        "break_even_steps": first / saved if saved > 0 else None,
    }
