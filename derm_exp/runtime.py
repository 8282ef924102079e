"""Device, precision and reproducibility settings for a run."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from derm_exp.config import AMP_MODES
from derm_exp.errors import ConfigError


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; anything else is validated against what exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device={name!r} is not a device: use auto, cpu, cuda, cuda:<index> or mps"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} requested but CUDA is not available (use device=auto|cpu)"
        )
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(f"device={name}: only {count} CUDA device(s) (cuda:0..)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name} requested but MPS is not available (use device=auto|cpu)")
    return device


@dataclass(frozen=True)
class Precision:
    """Autocast settings: ``dtype`` None means full fp32."""

    dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA (fp16 + GradScaler where bf16 is unsupported), fp32 elsewhere."""
    amp = str(amp).lower()
    if amp not in AMP_MODES:
        raise ValueError(f"trainer.amp={amp!r}: choose auto, bf16, fp16 or off")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, False)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16":
        return Precision(torch.float16, device.type == "cuda")
    return Precision(torch.bfloat16, False)
