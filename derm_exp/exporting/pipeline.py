"""Export one loaded classifier to a verified, self-describing ONNX file (fp32 or int8)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from derm_exp.exporting.metadata import attach_metadata, build_metadata, check_session
from derm_exp.exporting.network import export_network
from derm_exp.exporting.quantize import quantize_int8
from derm_exp.exporting.runtime import open_session, require_onnx
from derm_exp.exporting.verify import TOLERANCES, Verification, verification_batch, verify_export

log = logging.getLogger(__name__)
QUANTIZE = (None, "int8")


@dataclass(frozen=True)
class ExportResult:
    """The written file, its metadata (as embedded) and the verification against PyTorch."""

    path: Path
    metadata: dict[str, Any]
    verification: Verification


def onnx_file_name(checkpoint: str | Path, quantize: str | None = None) -> str:
    """``checkpoint_best.pt`` -> ``checkpoint_best.onnx`` (``checkpoint_best.int8.onnx``)."""
    stem = Path(checkpoint).stem
    return f"{stem}.{quantize}.onnx" if quantize else f"{stem}.onnx"


def export_loaded(
    loaded: Any,
    source: Any,
    checkpoint: Mapping[str, Any],
    out: str | Path,
    *,
    quantize: str | None = None,
    quantize_method: str = "static",
    tolerance: float | None = None,
    n_images: int = 16,
    threads: int | None = None,
    sidecar: bool = True,
) -> ExportResult:
    """Export ``loaded.model`` to ``out``: ONNX (opset 17, dynamic batch), optionally int8, its
    metadata embedded (:mod:`derm_exp.exporting.metadata`), verified against PyTorch on
    :func:`~derm_exp.exporting.verify.verification_batch` before ``out`` is written (atomic
    rename: a failed export leaves no file). A metadata-fusion model's graph has a second input,
    the (N, M) encoded metadata, and its encoder is embedded (``metadata_input``)."""
    require_onnx("onnx")
    require_onnx("onnxruntime")
    if quantize not in QUANTIZE:
        from derm_exp.errors import ConfigError

        raise ConfigError(f"quantize={quantize}: choose int8 or null (fp32)")
    precision = quantize or "fp32"
    tolerance = TOLERANCES[precision] if tolerance is None else float(tolerance)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = verification_batch(loaded, source, n_images)
    metadata = build_metadata(loaded, source, checkpoint, precision)
    width = (metadata.get("metadata_input") or {}).get("width")
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=out.parent) as tmp:
        path = export_network(
            loaded.model, Path(tmp) / "fp32.onnx", loaded.data_config["input_size"], width
        )
        if quantize:
            calibration = None if batch.metadata is None else batch.metadata.numpy()
            path = quantize_int8(
                path, Path(tmp) / "int8.onnx", quantize_method, batch.images.numpy(), calibration
            )
            metadata["quantization"] = {
                "method": quantize_method,
                "calibration": batch.description if quantize_method == "static" else None,
            }
        session = open_session(path, threads)
        check_session(session, metadata, out)
        verification = verify_export(
            loaded.model,
            session,
            batch.images,
            float(loaded.temperature),
            tolerance,
            batch.description,
            batch.metadata,
            batch.withheld,
        )
        metadata["verification"] = verification.as_dict()
        attach_metadata(path, metadata, sidecar=False)
        os.replace(path, out)
    if sidecar:
        from derm_exp.exporting.metadata import sidecar_path

        sidecar_path(out).write_text(_json(metadata))
    log.info("exported %s (%s, verified: %s)", out, precision, _summary(verification))
    return ExportResult(out, metadata, verification)


def _json(metadata: Mapping[str, Any]) -> str:
    import json

    return json.dumps(metadata, indent=2, sort_keys=True, default=str)


def _summary(v: Verification) -> str:
    return (
        f"max |dp| {v.max_abs_prob_diff:.2g} <= {v.tolerance:.2g} on {v.inputs}, "
        f"argmax agreement {v.argmax_agreement:.0%}"
    )


def copy_export(src: str | Path, dst: str | Path) -> Path:
    """Copy an ONNX file (and its sidecar) atomically to ``dst``."""
    from derm_exp.exporting.metadata import sidecar_path

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    if sidecar_path(src).is_file():
        shutil.copyfile(sidecar_path(src), sidecar_path(dst))
    return dst
