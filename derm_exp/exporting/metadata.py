"""The self-describing part of an exported ONNX file: one JSON document in the model's
``metadata_props`` under the key ``derm_exp`` (also written as a sidecar ``<file>.json``).

It holds what a predictor needs besides the graph: the class order, the preprocessing (timm's
data config: input size, crop, mean/std, interpolation), the validation-fitted temperature, the
abstention threshold when the checkpoint has one, the precision (``fp32`` or ``int8``, the
latter flagged ``approximate``), where it came from (checkpoint path and SHA-256, MLflow run id,
registered version, data fingerprint) and the verification against PyTorch done at export.

Formats: ``derm_exp.onnx/1`` is an image-only graph (one input, ``image``); image-only exports
still write it, so older derm_exp versions read them. ``derm_exp.onnx/2`` is a metadata-fusion
graph: a second input ``metadata`` (N, M) float32, the patient metadata encoded by the model's
own encoder, described by ``metadata_input`` (its width, feature names and the encoder's state,
:meth:`~derm_exp.data.metadata_encoding.MetadataEncoder.to_dict`), so the file alone encodes
metadata dicts exactly as the checkpoint did (:func:`metadata_encoder`). Both are read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from derm_exp.exporting.runtime import OnnxModelError, require_onnx

FORMAT = "derm_exp.onnx/1"  # image-only graphs
METADATA_FORMAT = "derm_exp.onnx/2"  # graphs with the second, encoded-metadata input
FORMATS = (FORMAT, METADATA_FORMAT)
METADATA_KEY = "derm_exp"
INPUT_NAME = "image"
METADATA_INPUT_NAME = "metadata"
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
    metadata_input = metadata_input_entry(loaded)
    meta = {
        "format": METADATA_FORMAT if metadata_input else FORMAT,
        "classes": list(loaded.classes),
        "data_config": _plain(dict(loaded.data_config)),
        "temperature": float(loaded.temperature),
        # Added to checkpoints by selective prediction (optional: older checkpoints lack it).
        "abstention": _plain(checkpoint.get("abstention")),
        "precision": precision,
        "approximate": precision != "fp32",
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "meaning": "logits before temperature"},
        "model": {
            "name": model_cfg.get("name"),
            "head": str(head).rsplit(".", 1)[-1] or None,
            "metadata": _method(loaded),
        },
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
    if metadata_input:
        meta["metadata_input"] = metadata_input
    return meta


def _method(loaded: Any) -> str:
    """The model's ``model.metadata.method`` (``none``: image-only)."""
    if getattr(loaded, "metadata_encoder", None) is None:
        return "none"
    model_cfg = (loaded.config or {}).get("model") or {}
    return str((model_cfg.get("metadata") or {}).get("method", "unknown"))


def metadata_input_entry(loaded: Any) -> dict[str, Any] | None:
    """The ``metadata_input`` section of a metadata-fusion model's export (None: image-only)."""
    encoder = getattr(loaded, "metadata_encoder", None)
    if encoder is None:
        return None
    return {
        "name": METADATA_INPUT_NAME,
        "layout": "NM",
        "dtype": "float32",
        "width": int(encoder.dim),
        "method": _method(loaded),
        "feature_names": list(encoder.feature_names),
        "encoding": _plain(encoder.to_dict()),
        # What to feed for an image without metadata (every missing flag set), for readers
        # of the file outside derm_exp; derm_exp recomputes it from the encoding.
        "nothing_known": [float(v) for v in encoder.missing_vector()],
    }


def metadata_encoder(meta: Mapping[str, Any], where: str | Path) -> Any:
    """The :class:`~derm_exp.data.metadata_encoding.MetadataEncoder` embedded in a metadata
    model's export (None for an image-only one); :class:`OnnxModelError` when it is malformed
    or its width differs from the recorded input width."""
    entry = meta.get("metadata_input")
    if entry is None:
        return None
    from derm_exp.data.metadata_encoding import MetadataEncoder

    try:
        encoder = MetadataEncoder.from_dict(entry["encoding"])
        width = int(entry["width"])
        encoder.encode_records([None])  # every column and category list is usable
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # MetadataError: ValueError
        detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError) else f"no {exc}"
        raise OnnxModelError(
            f"{where}: its metadata encoder (metadata_input) is unusable ({detail}); re-export "
            "it with python -m derm_exp.export model=<checkpoint> format=onnx"
        ) from None
    if encoder.dim != width:
        raise OnnxModelError(
            f"{where}: its metadata encoder gives {encoder.dim} features, but metadata_input "
            f"says width {width}; the file does not match its metadata"
        )
    return encoder


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
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise OnnxModelError(
            f"{where}: metadata format {found!r}, expected {' or '.join(map(repr, FORMATS))} "
            "(a newer derm_exp wrote it? upgrade derm_exp)"
        )
    required = ["classes", "data_config", "temperature"]
    if meta["format"] == METADATA_FORMAT:
        required.append("metadata_input")
    missing = [k for k in required if k not in meta]
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
    """Refuse a graph whose inputs/outputs disagree with its metadata (input size, metadata
    width, number of classes): a file edited or assembled from different exports."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    entry = meta.get("metadata_input")
    expected = [INPUT_NAME] + ([str(entry.get("name", METADATA_INPUT_NAME))] if entry else [])
    names = [i.name for i in inputs]
    if names != expected or len(outputs) != 1:
        kind = "a metadata-fusion model" if entry else "an image-only model"
        raise OnnxModelError(
            f"{where}: the graph takes inputs {names} and has {len(outputs)} output(s), but its "
            f"metadata describes {kind} (inputs {expected}, one output)"
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
    if entry:
        _check_metadata_width(inputs[1].shape, entry, where)
    n_out = list(outputs[0].shape)[-1]
    if isinstance(n_out, int) and n_out != len(meta["classes"]):
        raise OnnxModelError(
            f"{where}: the graph outputs {n_out} classes, but its metadata lists "
            f"{len(meta['classes'])} ({', '.join(meta['classes'])})"
        )


def _check_metadata_width(shape: list[Any], entry: Mapping[str, Any], where: str | Path) -> None:
    """The graph's metadata input is (batch, width), width as recorded in ``metadata_input``."""
    width = entry.get("width")
    graph_width = shape[-1] if len(shape) == 2 else None
    if not isinstance(width, int) or not isinstance(graph_width, int) or graph_width != width:
        raise OnnxModelError(
            f"{where}: the graph's metadata input is {list(shape)}, but its metadata says "
            f"(batch, {width}) (metadata_input.width, the encoder's features); the file does "
            "not match its metadata"
        )
