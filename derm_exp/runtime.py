"""Device, precision and reproducibility settings for a run."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from derm_exp.config import AMP_MODES
from derm_exp.errors import ConfigError

log = logging.getLogger(__name__)


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without either, oneDNN
    emulates it: the cpu_1h train step ran 10x slower in bf16 than in fp32 on an AVX2 CPU
    (docs/RESULTS.md). torch has no public API for this, only its private ``torch.cpu._is_*``
    probes; a torch without them counts as no native bf16 (the safe answer: fp32)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA (fp16 + GradScaler where bf16 is unsupported), fp32 elsewhere.
    ``fast``: as ``auto``, and bf16 also on a CPU that computes it natively."""
    amp = str(amp).lower()
    if amp not in AMP_MODES:
        raise ValueError(f"trainer.amp={amp!r}: choose {', '.join(AMP_MODES)}")
    if amp == "fast":
        native = device.type == "cpu" and cpu_has_native_bf16()
        amp = "bf16" if native else "auto"
        if device.type == "cpu":
            log.info("amp=fast: %s on this CPU (native bf16: %s)", amp if native else "off", native)
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, False)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16":
        return Precision(torch.float16, device.type == "cuda")
    if device.type == "cpu" and not cpu_has_native_bf16():
        log.warning(
            "bf16 autocast on a CPU without native bf16 (AVX512-BF16 / AMX) is emulated and "
            "can be several times slower than fp32: use amp=fast (bf16 only where native) or off"
        )
    return Precision(torch.bfloat16, False)
