"""Export: ``python -m derm_exp.export model=<checkpoint | run id | models:/...> format=onnx``.

Research and education only; not a medical device. Do not use for diagnosis.

Writes the network (fp32, eval mode; ``quantize=int8`` for ONNX Runtime's int8 quantization) as
an ONNX file (opset 17, dynamic batch) whose ``metadata_props`` hold the classes,
preprocessing, temperature, abstention threshold and source of the checkpoint
(:mod:`derm_exp.exporting.metadata`; also a sidecar ``<file>.json``). A metadata-fusion model
(``model/metadata=concat|film``) gets a second input, ``metadata`` (N, M): the patient metadata
encoded by its own encoder, whose state the file embeds, so ``backend=onnxruntime`` encodes
metadata dicts from the file alone. Before the file is written, ONNX Runtime's output is
compared with PyTorch's on the checkpoint's own validation images (generated images when they
are not reachable; a metadata model's with metadata, some of it missing, and with it withheld);
beyond the tolerance the export fails with both numbers. When the checkpoint belongs to a run
of the tracking store, the file is logged as the run's artifacts ``onnx/``; ``register=true``
also logs it as an MLflow ``onnx`` model and registers it (``registry_name``, default
``derm-classifier-onnx``).

Default output: beside a local checkpoint (``checkpoint_best.onnx``, ``checkpoint_best.int8.onnx``),
which is where ``backend=onnxruntime`` looks first; for a run id or ``models:/`` URI, the run
folder of this command.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main

log = logging.getLogger("derm_exp.export")
FORMATS = ("onnx",)


def check_options(cfg: DictConfig) -> str | None:
    """Fail before torch loads on a missing model or an unknown format / quantization."""
    from derm_exp.errors import ConfigError, ModelSourceError

    if cfg.model_ref is None:
        raise ModelSourceError("no model given: pass model=<checkpoint, run id or models:/ URI>")
    if str(cfg.format) not in FORMATS:
        raise ConfigError(f"format={cfg.format}: choose one of {', '.join(FORMATS)}")
    quantize = None if cfg.quantize in (None, "none", "fp32") else str(cfg.quantize)
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize={cfg.quantize}: choose int8 (or leave it out for fp32)")
    from derm_exp.exporting.runtime import require_onnx

    require_onnx("onnx")
    require_onnx("onnxruntime")
    return quantize


def output_path(cfg: DictConfig, source: Any, quantize: str | None, run_dir: Path) -> Path:
    """``out=`` when given, else beside a local checkpoint, else in the run folder."""
    from derm_exp.exporting.pipeline import onnx_file_name

    if cfg.out:
        return Path(cfg.out).expanduser()
    name = onnx_file_name(source.checkpoint, quantize)
    return source.checkpoint.with_name(name) if source.kind == "checkpoint" else run_dir / name


def export(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run the export app; return what was written, verified, logged and registered."""
    quantize = check_options(cfg)
    from derm_exp.exporting.pipeline import export_loaded
    from derm_exp.inference.loading import load_classifier
    from derm_exp.inference.sources import peek_checkpoint, resolve_source

    source = resolve_source(str(cfg.model_ref), cfg.tracking.uri)
    loaded = load_classifier(source.checkpoint, "cpu")
    out = output_path(cfg, source, quantize, Path(run_dir))
    threads = None if cfg.backend_threads is None else int(cfg.backend_threads)
    result = export_loaded(
        loaded,
        source,
        peek_checkpoint(source.checkpoint),
        out,
        quantize=quantize,
        quantize_method=str(cfg.quantize_method),
        tolerance=None if cfg.tolerance is None else float(cfg.tolerance),
        n_images=int(cfg.verify_images),
        threads=threads,
        sidecar=bool(cfg.sidecar),
    )
    summary: dict[str, Any] = {"path": str(result.path), "verification": result.verification}
    summary.update(_track(cfg, result, source.run_id))
    _print(summary, result)
    return summary


def _track(cfg: DictConfig, result: Any, run_id: str | None) -> dict[str, Any]:
    """Log to the source run and register, as configured (see the module docstring)."""
    from derm_exp.errors import ConfigError
    from derm_exp.exporting.tracking import log_export, register_export, source_run

    wanted = bool(cfg.log_to_run) or bool(cfg.register)
    run = source_run(run_id, cfg.tracking.uri) if wanted else None
    if cfg.register and run is None:
        raise ConfigError(
            f"register=true needs the checkpoint's training run in {cfg.tracking.uri} (run "
            f"{run_id or 'unknown'}); the file was written to {result.path}"
        )
    out: dict[str, Any] = {}
    if run is not None and cfg.log_to_run:
        out["artifact"] = f"runs:/{run_id}/" + log_export(result.path, run_id, cfg.tracking.uri)
    if run is not None and cfg.register:
        out["registered"] = register_export(
            result.path, result.metadata, run_id, cfg.tracking.uri, str(cfg.registry_name)
        )
    return out


def _print(summary: dict[str, Any], result: Any) -> None:
    v, meta = result.verification, result.metadata
    print(f"ONNX model   {summary['path']}")
    print(
        f"Precision    {meta['precision']}"
        + (" (approximate: int8 quantized)" if meta["approximate"] else "")
    )
    print(f"Classes      {', '.join(meta['classes'])}; input {meta['data_config']['input_size']}")
    if meta.get("metadata_input"):
        entry = meta["metadata_input"]
        print(
            f"Metadata     {entry['method']} fusion: input {entry['name']!r} (N, {entry['width']}),"
            f" encoded from {', '.join(entry['encoding']['columns'])} by the embedded encoder"
        )
    print(
        f"Verified     ONNX Runtime vs PyTorch on {v.inputs}: max |dp| {v.max_abs_prob_diff:.3g} "
        f"(tolerance {v.tolerance:.3g}), max |dlogit| {v.max_abs_logit_diff:.3g}, argmax "
        f"agreement {v.argmax_agreement:.0%}"
    )
    if "artifact" in summary:
        print(f"MLflow       {summary['artifact']}")
    if "registered" in summary:
        print(f"Registered   {summary['registered']}")
    print(
        f"Use it       python -m derm_exp.predict model={summary['path']} image=<file or folder> "
        "backend=onnxruntime"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    from derm_exp.errors import report_user_errors

    with report_user_errors():
        export(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    from derm_exp.inference.sources import rewrite_model_override

    sys.argv[1:] = rewrite_model_override(sys.argv[1:])
    run_hydra_main(main, "export")
