"""The optional ONNX dependencies and ONNX Runtime sessions (CPU provider, thread count)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from derm_exp.errors import UserError

INSTALL_HINT = "install the optional extra: pip install 'derm_exp[onnx]' (onnx, onnxruntime)"


class OnnxUnavailableError(UserError, ImportError):
    """onnx / onnxruntime are not installed."""


class OnnxModelError(UserError, ValueError):
    """An ONNX file is unreadable, not a derm_exp export, or does not match its metadata."""


def require_onnx(module: str = "onnxruntime") -> Any:
    """Import ``onnx`` or ``onnxruntime`` (or a submodule), or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OnnxUnavailableError(
            f"backend=onnxruntime / ONNX export needs {module.split('.')[0]}, which is not "
            f"installed ({exc}); {INSTALL_HINT}"
        ) from None


def default_threads() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def open_session(path: str | Path, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU provider with ``threads`` intra-op threads
    (default :func:`default_threads`), all graph optimisations, sequential execution.

    :class:`OnnxModelError` when the file is missing or not a loadable ONNX model."""
    ort = require_onnx("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or default_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise OnnxModelError(
            f"cannot load ONNX model {path}: {first}; re-export it with "
            "python -m derm_exp.export model=<checkpoint> format=onnx"
        ) from None
