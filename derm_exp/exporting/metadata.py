"""The self-describing part of an exported ONNX file: one JSON document in the model's
``metadata_props`` under the key ``derm_exp`` (also written as a sidecar ``<file>.json``).

It holds what a predictor needs besides the graph: the class order, the preprocessing (timm's
data config: input size, crop, mean/std, interpolation), the validation-fitted temperature, the
abstention threshold when the checkpoint has one, the precision (``fp32`` or ``int8``, the
latter flagged ``approximate``), where it came from (checkpoint path and SHA-256, MLflow run id,
registered version, data fingerprint) and the verification against PyTorch done at export.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from derm_exp.exporting.runtime import OnnxModelError, require_onnx

FORMAT = "derm_exp.onnx/1"
METADATA_KEY = "derm_exp"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (the checkpoint's fingerprint), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """JSON-friendly copy (tuples -> lists, numbers kept)."""
    return json.loads(json.dumps(value, default=str))


def build_metadata(
    loaded: Any, source: Any, checkpoint: Mapping[str, Any], precision: str = "fp32"
) -> dict[str, Any]:
    """The metadata of an export of ``loaded`` (a :class:`~derm_exp.inference.loading.
    LoadedModel`) resolved from ``source`` (a :class:`~derm_exp.inference.sources.ModelSource`
    or None); ``checkpoint`` is the checkpoint's dict (for ``abstention``, fingerprint, kind)."""
    import torch

    model_cfg = (loaded.config or {}).get("model") or {}
    head = (model_cfg.get("head") or {}).get("_target_", "")
    path = loaded.checkpoint_path
    return {
        "format": FORMAT,
        "classes": list(loaded.classes),
        "data_config": _plain(dict(loaded.data_config)),
        "temperature": float(loaded.temperature),
        # Added to checkpoints by selective prediction (optional: older checkpoints lack it).
        "abstention": _plain(checkpoint.get("abstention")),
        "precision": precision,
        "approximate": precision != "fp32",
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "meaning": "logits before temperature"},
        "model": {"name": model_cfg.get("name"), "head": str(head).rsplit(".", 1)[-1] or None},
        "source": {
            "ref": None if source is None else str(source.ref),
            "kind": None if source is None else source.kind,
            "run_id": (None if source is None else source.run_id) or checkpoint.get("run_id"),
            "model_version": None if source is None else source.model_version,
            "checkpoint": None if path is None else str(path),
            "checkpoint_sha256": None if path is None else file_sha256(path),
            "checkpoint_kind": checkpoint.get("kind"),
            "epoch": checkpoint.get("epoch"),
            "data_fingerprint": checkpoint.get("data_fingerprint"),
        },
        "opset": OPSET,
        "exported_with": {
            "torch": str(torch.__version__),
            "onnx": str(require_onnx("onnx").__version__),
        },
    }


def attach_metadata(path: str | Path, metadata: Mapping[str, Any], sidecar: bool = True) -> None:
    """Write ``metadata`` into the ONNX file's ``metadata_props`` (and ``<path>.json``)."""
    onnx = require_onnx("onnx")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(_plain(metadata), sort_keys=True))
    onnx.save(model, str(path))
    if sidecar:
        sidecar_path(path).write_text(json.dumps(_plain(metadata), indent=2, sort_keys=True))


def sidecar_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    return Path(f"{path}.json")


def parse_metadata(props: Mapping[str, str], where: str | Path) -> dict[str, Any]:
    """The derm_exp metadata from a ``metadata_props`` mapping, checked for the keys a
    predictor needs; :class:`OnnxModelError` when absent or malformed."""
    text = props.get(METADATA_KEY)
    if text is None:
        raise OnnxModelError(
            f"{where} is an ONNX model without derm_exp metadata (classes, preprocessing); "
            "export it with python -m derm_exp.export model=<checkpoint> format=onnx"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxModelError(f"{where}: its derm_exp metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise OnnxModelError(f"{where}: metadata format {found!r}, expected {FORMAT!r}")
    missing = [k for k in ("classes", "data_config", "temperature") if k not in meta]
    if missing:
        raise OnnxModelError(f"{where}: derm_exp metadata lacks {', '.join(missing)}")
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The derm_exp metadata of an ONNX file (graph weights not needed, but parsed)."""
    onnx = require_onnx("onnx")
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise OnnxModelError(f"cannot read ONNX model {path}: {type(exc).__name__}") from None
    return parse_metadata({p.key: p.value for p in model.metadata_props}, path)


def check_session(session: Any, meta: Mapping[str, Any], where: str | Path) -> None:
    """Refuse a graph whose input/output shapes disagree with its metadata (input size, number
    of classes): a file edited or assembled from different exports."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise OnnxModelError(
            f"{where}: expected one input and one output, found {len(inputs)} and {len(outputs)}"
        )
    size = [int(s) for s in meta["data_config"]["input_size"]]
    graph_in = list(inputs[0].shape)[1:]
    if len(graph_in) != len(size) or any(
        isinstance(g, int) and g != s for g, s in zip(graph_in, size, strict=True)
    ):
        raise OnnxModelError(
            f"{where}: the graph takes input {inputs[0].shape}, but its metadata says "
            f"{size} (input_size); the file does not match its metadata"
        )
    n_out = list(outputs[0].shape)[-1]
    if isinstance(n_out, int) and n_out != len(meta["classes"]):
        raise OnnxModelError(
            f"{where}: the graph outputs {n_out} classes, but its metadata lists "
            f"{len(meta['classes'])} ({', '.join(meta['classes'])})"
        )
