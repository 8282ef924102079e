"""The ``exports`` section: does each backbone of ``conf/model/`` export to ONNX?

Each option of the ``model`` group (``benchmark.export_models``; empty = every option) with each
head of ``benchmark.export_heads`` is built with random weights at
``benchmark.export_image_size`` px (BatchNorm statistics recomputed on generated images,
``benchmark.export_bn_update``: see :func:`_update_batchnorm`) and put through the export of
``derm_exp.export`` (:func:`~derm_exp.exporting.pipeline.export_loaded`: ``torch.onnx.export``,
then ONNX Runtime verified against PyTorch on generated images) into a temporary folder. Per
pair: whether it worked (else the error, one line), seconds, file size and the verification's
largest probability difference. A failure is recorded and the next pair runs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, read_write

from derm_exp.config import as_list, group_options
from derm_exp.data.metadata import CLASSES

log = logging.getLogger(__name__)


def _model_config(name: str, head: str) -> DictConfig:
    """The ``model`` group's option ``name`` with ``model/head=head`` (Hydra's composition)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from derm_exp.config import CONF_DIR

    overrides = [f"model={name}", f"model/head={head}"]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (derm_exp.benchmark)
        return compose("train", overrides=overrides).model
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides).model


def _update_batchnorm(loaded: Any) -> None:
    """BatchNorm running statistics recomputed on generated images, as training leaves them.

    With the untouched statistics of a random init (mean 0, variance 1) activations grow block
    after block (V2-L's logits reach ~1e5), and the float rounding of the two runtimes, scaled
    up with them, fails the verification without any fault in the graph; a trained network's
    statistics keep activations normalised. ``torch.optim.swa_utils.update_bn`` does exactly
    this recomputation."""
    import torch
    from torch.optim.swa_utils import update_bn

    from derm_exp.exporting.verify import verification_inputs

    images, _ = verification_inputs(loaded, None, 16, seed=1)
    with torch.no_grad():
        update_bn([images], loaded.model)
    loaded.model.eval()


def export_one(
    name: str, head: str, size: int, folder: Path, threads: int, bn_update: bool = True
) -> dict[str, Any]:
    """Export ``name`` + ``head`` (random weights, ``size`` px; BatchNorm statistics from
    generated images unless ``bn_update=False``); what happened."""
    import torch

    from derm_exp.exporting.pipeline import export_loaded
    from derm_exp.inference.loading import LoadedModel
    from derm_exp.models.classifier import build_model

    model_cfg = _model_config(name, head)
    with read_write(model_cfg):
        model_cfg.pretrained, model_cfg.pretrained_file = False, None
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = build_model(model_cfg, num_classes=len(CLASSES), image_size=size).eval()
        config = {"model": OmegaConf.to_container(model_cfg, resolve=True)}
        loaded = LoadedModel(model, list(CLASSES), dict(model.data_config), 1.0, config, None)
        if bn_update:
            _update_batchnorm(loaded)
        path = folder / f"{name}-{head}.onnx"
        result = export_loaded(loaded, None, {}, path, n_images=4, threads=threads, sidecar=False)
    except Exception as exc:  # noqa: BLE001 - record why this backbone cannot export, go on
        log.warning("export of %s + %s failed: %s", name, head, exc)
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return {"ok": False, "error": f"{type(exc).__name__}: {first}"}
    out = {
        "ok": True,
        "backbone": str(model_cfg.name),
        "bn_update": bn_update,
        "seconds": time.perf_counter() - start,
        "file_mb": path.stat().st_size / 2**20,
        "max_abs_prob_diff": result.verification.max_abs_prob_diff,
    }
    path.unlink()
    return out


def exports_section(cfg: DictConfig) -> dict[str, Any]:
    """Figures of every (backbone, head) pair (see the module docstring)."""
    from derm_exp.exporting.runtime import default_threads

    b = cfg.benchmark
    names = [str(n) for n in as_list(b.get("export_models"))] or group_options("model")
    heads = [str(h) for h in as_list(b.get("export_heads"))] or ["simple"]
    size = int(b.get("export_image_size") or 64)
    threads = int(b.get("threads") or default_threads())
    bn_update = bool(b.get("export_bn_update", True))
    out: dict[str, Any] = {"image_size": size, "bn_update": bn_update, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-exports-") as tmp:
        for name in names:
            for head in heads:
                log.info("benchmark: exporting %s + %s at %d px", name, head, size)
                entry = export_one(name, head, size, Path(tmp), threads, bn_update)
                out["models"][f"{name}+{head}"] = entry
    out["all_ok"] = all(e["ok"] for e in out["models"].values())
    return out


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of :func:`derm_exp.perf.report.table`: export seconds of each pair that worked."""
    models = (result.get("exports") or {}).get("models") or {}
    return [(f"exports.models.{k}.seconds", f"export + verify: {k}", "s") for k in models]
