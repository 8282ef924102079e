"""int8 quantization with ONNX Runtime: static (QDQ, per-channel int8 weights, uint8
activations calibrated on images, and a metadata model's encoded metadata) or dynamic (weights
only; activations quantized per batch)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from derm_exp.errors import ConfigError
from derm_exp.exporting.metadata import INPUT_NAME, METADATA_INPUT_NAME
from derm_exp.exporting.runtime import require_onnx

METHODS = ("static", "dynamic")


class _Images:
    """ONNX Runtime's CalibrationDataReader over preprocessed images (and their encoded
    metadata), one per call."""

    def __init__(self, images: np.ndarray, metadata: np.ndarray | None = None) -> None:
        items = []
        for i in range(len(images)):
            item = {INPUT_NAME: images[i : i + 1]}
            if metadata is not None:
                item[METADATA_INPUT_NAME] = metadata[i : i + 1]
            items.append(item)
        self._items = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


@contextlib.contextmanager
def quiet_logger(name: str = "") -> Iterator[None]:
    """Logger ``name`` (default the root logger) at errors only for the block. ONNX Runtime's
    quantizer logs a line per tensor through the root logger."""
    target = logging.getLogger(name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    method: str,
    calibration: Any,
    metadata_calibration: Any = None,
) -> Path:
    """Write the int8 version of the fp32 ONNX file ``src`` to ``dst``.

    ``static``: ``quant_pre_process`` (shape inference, graph optimisation), then
    ``quantize_static`` calibrated (min-max) on ``calibration`` (N, 3, H, W) images, each with
    its row of ``metadata_calibration`` ((N, M) encoded metadata, a metadata model's second
    input); Conv and Gemm/MatMul run as QLinear ops. ``dynamic``: ``quantize_dynamic`` (int8
    weights, no calibration); on CPUs it turns Conv into ConvInteger, which is often slower
    than fp32.
    """
    if method not in METHODS:
        raise ConfigError(f"quantize_method={method!r}: choose one of {', '.join(METHODS)}")
    q = require_onnx("onnxruntime.quantization")
    dst = Path(dst)
    if method == "dynamic":
        q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8)
        return dst
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="derm-quant-") as tmp, quiet_logger():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        images = np.ascontiguousarray(np.asarray(calibration, dtype=np.float32))
        metadata = None
        if metadata_calibration is not None:
            metadata = np.ascontiguousarray(np.asarray(metadata_calibration, dtype=np.float32))
        q.quantize_static(
            str(prepared),
            str(dst),
            _Images(images, metadata),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            weight_type=q.QuantType.QInt8,
            activation_type=q.QuantType.QUInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
    return dst
