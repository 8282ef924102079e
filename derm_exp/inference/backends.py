"""What runs the network behind the predictor's forward: PyTorch or ONNX Runtime.

Research and education only; not a medical device. Do not use for diagnosis.

Both take a preprocessed batch (B, 3, H, W) (every TTA view already stacked into it) and return
(B, C) logits as a float32 CPU-or-device tensor, so preprocessing, TTA views, temperature and
aggregation stay the predictor's and the outputs are the same in form.

* :class:`TorchBackend`: the network in eval mode, channels-last, optional autocast and
  ``torch.compile`` (falling back to eager when compilation fails).
* :class:`OnnxRuntimeBackend`: an ``onnxruntime.InferenceSession`` (CPU provider,
  ``backend_threads`` intra-op threads, default: the cores this process may use) over an ONNX
  file written by ``derm_exp.export``. Which file, for a model reference:

  1. ``model=<file.onnx>``: that file; classes, preprocessing, temperature and a metadata
     model's encoder come from its embedded metadata (no checkpoint needed);
  2. a checkpoint with an export beside it (``checkpoint_best.onnx``, or
     ``checkpoint_best.int8.onnx`` with ``quantize=int8``) made from this very checkpoint
     (SHA-256 recorded in the file): that file;
  3. otherwise the checkpoint is exported on the fly (verified like ``derm_exp.export``) into
     ``$DERM_EXP_CACHE_DIR/onnx`` (default ``data/cache/onnx``), keyed by the checkpoint's
     SHA-256, with a log line; later runs reuse it.

  A metadata-fusion export has a second input, the (N, M) encoded metadata; the backend feeds
  it what it is given, and for a batch given none (``metadata=None``: the torch path then calls
  ``model(x)``, which reads every image as "nothing known") the encoder's "nothing known" row
  for every image, so both backends compute the same thing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from derm_exp.errors import PredictionInputError
from derm_exp.runtime import Precision

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnxruntime")


def check_backend(backend: str, amp: str = "off", compile: bool = False) -> str:
    """``backend`` validated; autocast and compile belong to the torch backend only."""
    backend = str(backend)
    if backend not in BACKENDS:
        raise PredictionInputError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and (str(amp) != "off" or compile):
        raise PredictionInputError(
            "backend=onnxruntime runs the exported fp32 (or int8, quantize=int8) graph: amp= and "
            "compile= apply to backend=torch only"
        )
    return backend


class TorchBackend:
    """The PyTorch network (see the module docstring)."""

    name = "torch"
    approximate = False

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        precision: Precision,
        compiler: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    ) -> None:
        self.device = device
        self.precision = precision
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.eager_model = self.model
        if compiler is not None:
            self.model = compiler(self.model)
        self._compile_checked = compiler is None

    def eval(self) -> TorchBackend:
        return self

    def __call__(self, x: torch.Tensor, *metadata: torch.Tensor) -> torch.Tensor:
        """(N, C) logits; ``metadata``: a metadata-fusion model's (N, M) encoded metadata."""
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        extra = [m.to(self.device) for m in metadata]
        with self.precision.autocast(self.device):
            if self._compile_checked:
                return self.model(x, *extra)
            try:  # the first call compiles
                out = self.model(x, *extra)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly instead
                log.warning(
                    "torch.compile failed (%s: %s); running the model eagerly",
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                )
                self.model = self.eager_model
                out = self.model(x, *extra)
            self._compile_checked = True
            return out


class OnnxRuntimeBackend:
    """An exported ONNX file in ONNX Runtime (see the module docstring); ``metadata`` is the
    file's embedded derm_exp metadata, ``metadata_encoder`` a metadata model's encoder rebuilt
    from it (None: image-only), ``approximate`` True for int8."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from derm_exp.exporting.metadata import (
            INPUT_NAME,
            check_session,
            metadata_encoder,
            parse_metadata,
        )
        from derm_exp.exporting.runtime import default_threads, open_session

        self.path = Path(path)
        self.threads = int(threads or default_threads())
        self.session = open_session(self.path, self.threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = parse_metadata(props, self.path)
        check_session(self.session, self.metadata, self.path)
        self.metadata_encoder = metadata_encoder(self.metadata, self.path)
        self._input = INPUT_NAME
        self._metadata_input: str | None = None
        self._missing: np.ndarray | None = None
        if self.metadata_encoder is not None:
            self._metadata_input = str(self.metadata["metadata_input"]["name"])
            self._missing = self.metadata_encoder.missing_vector().astype(np.float32)
        self.approximate = bool(self.metadata.get("approximate", False))
        self.device = torch.device("cpu")

    def eval(self) -> OnnxRuntimeBackend:
        return self

    def __call__(self, x: torch.Tensor, *metadata: torch.Tensor | None) -> torch.Tensor:
        """(N, C) logits; ``metadata``: a metadata model's (N, M) encoded metadata (none given:
        every image "nothing known"); an image-only graph ignores it, as the network does."""
        # NCHW, as exported: already so from the evaluation loader and the predictor (a
        # channels-last tensor is copied here, by torch's multi-threaded copy)
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        feeds = {self._input: batch}
        if self._metadata_input is not None:
            given = metadata[0] if metadata else None
            feeds[self._metadata_input] = self._encoded(given, len(batch))
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def _encoded(self, metadata: Any, n: int) -> np.ndarray:
        """The (n, M) float32 array fed as the metadata input; None: the "nothing known" row."""
        assert self._missing is not None
        if metadata is None:
            return np.ascontiguousarray(np.tile(self._missing, (n, 1)))
        if isinstance(metadata, torch.Tensor):
            metadata = metadata.detach().to("cpu", torch.float32).numpy()
        array = np.ascontiguousarray(np.asarray(metadata, dtype=np.float32))
        if array.shape != (n, len(self._missing)):
            from derm_exp.exporting.runtime import OnnxModelError

            raise OnnxModelError(
                f"{self.path}: encoded metadata of shape {tuple(array.shape)} for {n} images, "
                f"but this graph's metadata input takes ({n}, {len(self._missing)}) (its "
                "embedded encoder's features)"
            )
        return array

    def check_matches(
        self, classes: list[str], data_config: dict, where: str, encoder: Any = None
    ) -> None:
        """Refuse a file whose classes, preprocessing or metadata encoding (``encoder``: the
        checkpoint's, None for an image-only model) differ from the checkpoint's."""
        from derm_exp.exporting.runtime import OnnxModelError

        mine, theirs = _encoding(self.metadata_encoder), _encoding(encoder)
        if mine != theirs:
            raise OnnxModelError(
                f"{self.path}: its metadata encoding ({mine or 'none: image-only'}) differs from "
                f"{where}'s ({theirs or 'none: image-only'}); re-export it from this checkpoint"
            )
        meta = self.metadata
        if list(meta["classes"]) != list(classes):
            raise OnnxModelError(
                f"{self.path}: classes {meta['classes']} differ from {where}'s {classes}"
            )
        if list(meta["data_config"]["input_size"]) != list(data_config["input_size"]):
            raise OnnxModelError(
                f"{self.path}: input size {meta['data_config']['input_size']} differs from "
                f"{where}'s {list(data_config['input_size'])}"
            )


def _encoding(encoder: Any) -> dict[str, Any] | None:
    """A metadata encoder's state (None: image-only model)."""
    return None if encoder is None else encoder.to_dict()


def is_onnx_file(ref: str | os.PathLike) -> bool:
    """Whether a model reference names an ONNX file."""
    return str(ref).lower().endswith(".onnx")


def onnx_cache_dir() -> Path:
    """Where on-the-fly exports go: ``$DERM_EXP_CACHE_DIR/onnx`` (else ``data/cache/onnx``)."""
    from derm_exp.config import PROJECT_ROOT

    return Path(os.environ.get("DERM_EXP_CACHE_DIR") or PROJECT_ROOT / "data" / "cache") / "onnx"


def onnx_for_checkpoint(loaded: Any, source: Any, quantize: str | None = None) -> Path:
    """The ONNX file of ``loaded``'s checkpoint: beside it, cached, or exported now."""
    from derm_exp.exporting.metadata import file_sha256, read_metadata
    from derm_exp.exporting.pipeline import export_loaded, onnx_file_name
    from derm_exp.exporting.runtime import OnnxModelError
    from derm_exp.inference.sources import peek_checkpoint

    checkpoint = Path(loaded.checkpoint_path)
    sha = file_sha256(checkpoint)
    precision = quantize or "fp32"
    beside = checkpoint.with_name(onnx_file_name(checkpoint, quantize))
    cached = onnx_cache_dir() / onnx_file_name(f"{sha[:20]}.pt", quantize)
    for candidate in (beside, cached):
        if not candidate.is_file():
            continue
        try:
            meta = read_metadata(candidate)
        except OnnxModelError as exc:
            log.warning("ignoring %s: %s", candidate, exc)
            continue
        if (meta.get("source") or {}).get("checkpoint_sha256") == sha and meta.get(
            "precision"
        ) == precision:
            return candidate
    log.info(
        "backend=onnxruntime: exporting %s to ONNX (%s) into %s (once; reused afterwards)",
        checkpoint,
        precision,
        cached,
    )
    export_loaded(loaded, source, peek_checkpoint(checkpoint), cached, quantize=quantize)
    return cached


def make_backend(
    backend: str,
    loaded: Any,
    *,
    device: torch.device,
    precision: Precision,
    compiler: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    source: Any = None,
    threads: int | None = None,
    quantize: str | None = None,
    onnx_path: str | Path | None = None,
) -> TorchBackend | OnnxRuntimeBackend:
    """The backend that runs ``loaded``'s network (chosen once, at construction)."""
    if backend == "torch":
        if loaded.model is None:
            raise PredictionInputError(
                f"{onnx_path or 'this model'} is an ONNX file: use backend=onnxruntime"
            )
        return TorchBackend(loaded.model, device, precision, compiler)
    path = onnx_path or onnx_for_checkpoint(loaded, source, quantize)
    runtime = OnnxRuntimeBackend(path, threads)
    if loaded.model is not None:
        runtime.check_matches(
            list(loaded.classes),
            dict(loaded.data_config),
            "the checkpoint",
            getattr(loaded, "metadata_encoder", None),
        )
    log.info(
        "backend=onnxruntime: %s (%s, %d threads)",
        runtime.path,
        runtime.metadata.get("precision"),
        runtime.threads,
    )
    return runtime


def loaded_from_onnx(path: str | Path) -> Any:
    """A :class:`~derm_exp.inference.loading.LoadedModel` without a network (``model=None``)
    from an ONNX file's metadata: classes, preprocessing, temperature, abstention settings and
    a metadata model's encoder (rebuilt from its embedded state)."""
    from derm_exp.exporting.metadata import metadata_encoder, read_metadata
    from derm_exp.inference.loading import LoadedModel

    meta = read_metadata(path)
    model_cfg = dict(meta.get("model") or {})
    if isinstance(model_cfg.get("metadata"), str):  # as in a training config: {method: ...}
        model_cfg["metadata"] = {"method": model_cfg["metadata"]}
    return LoadedModel(
        model=None,  # type: ignore[arg-type]  # the graph runs in ONNX Runtime
        classes=list(meta["classes"]),
        data_config=dict(meta["data_config"]),
        temperature=float(meta["temperature"]),
        config={"model": model_cfg},
        checkpoint_path=None,
        abstention=meta.get("abstention"),
        metadata_encoder=metadata_encoder(meta, path),
    )
