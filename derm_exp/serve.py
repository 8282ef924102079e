"""Serve a model: ``python -m derm_exp.serve model=<ref> [host=127.0.0.1] [port=8000]``.

Research and education only; not a medical device. Do not use for diagnosis.

Loads the model once (any reference :func:`~derm_exp.inference.prediction_model.
load_prediction_model` resolves: checkpoint, run id, ``models:/`` URI, a registered ensemble),
then runs the FastAPI app of :mod:`derm_exp.service` under uvicorn: the web page at ``/``,
``POST /predict``, ``GET /health``, ``GET /model`` and the OpenAPI docs at ``/docs``. Binds
127.0.0.1 unless ``host=`` says otherwise. Settings: conf/serve.yaml.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main

log = logging.getLogger("derm_exp.serve")


def build_app(cfg: DictConfig):  # -> fastapi.FastAPI (imported lazily: --help stays fast)
    """Load the model named by ``cfg`` and return the app serving it."""
    from derm_exp.errors import ConfigError, ModelSourceError
    from derm_exp.tracking.model_refs import NO_MODEL, ref_list

    refs = ref_list(cfg.model_ref)
    if not refs and cfg.group is None:
        raise ModelSourceError(NO_MODEL)
    from derm_exp.inference.prediction_model import load_from_config
    from derm_exp.service.app import ServiceSettings, create_app
    from derm_exp.service.batching import BatchSettings
    from derm_exp.service.limits import Limits

    try:
        settings = ServiceSettings(
            batching=BatchSettings.from_config(cfg.batching),
            limits=Limits.from_config(cfg.limits),
            explain_method=str(cfg.explain.method),
            docs_assets_dir=cfg.docs.assets_dir and str(cfg.docs.assets_dir),
            prep_threads=int(cfg.prep_threads),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid serve settings: {exc}") from None
    if settings.batching.max_batch < 1 or settings.batching.queue_size < 1:
        raise ConfigError("batching.max_batch and batching.queue_size must be >= 1")
    if settings.prep_threads < 1:
        raise ConfigError(f"prep_threads={settings.prep_threads} must be >= 1")
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    loaded = load_from_config(refs, cfg)
    log.info("serving %s", loaded.description)
    return create_app(loaded, settings)


def serve(cfg: DictConfig) -> None:
    """Build the app and run uvicorn until Ctrl-C / SIGTERM."""
    import uvicorn

    app = build_app(cfg)
    host, port = str(cfg.host), int(cfg.port)
    print(f"derm_exp.serve: http://{host}:{port}/  (API docs /docs; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=str(cfg.log_level), access_log=False)


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    import os

    from derm_exp.errors import report_user_errors

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with report_user_errors():
        serve(cfg)


if __name__ == "__main__":
    from derm_exp.inference.sources import rewrite_model_override

    sys.argv[1:] = rewrite_model_override(sys.argv[1:])
    run_hydra_main(main, "serve")
