"""Benchmark settings check: cheap (no torch import), so mistakes are reported at once."""

from __future__ import annotations

from omegaconf import DictConfig

from derm_exp.config import as_list
from derm_exp.data.metadata import check_data_root
from derm_exp.training.validate import AMP_MODES, ConfigError

SECTIONS = ("loader", "train", "inference", "compare", "ddp", "backend", "exports")


def check_benchmark_config(cfg: DictConfig) -> list[str]:
    """The sections to run; :class:`ConfigError` for unknown sections or too-small counts,
    :class:`~derm_exp.data.metadata.DataValidationError` for a ``data.root`` that is no dataset."""
    b = cfg.benchmark
    # One value where a list is expected (sections: loader in a config file) is a one-item list;
    # the command line is rewritten the same way by config.run_hydra_main.
    for key in (
        "sections",
        "inference_amp",
        "real_loader_workers",
        "export_models",
        "export_heads",
    ):
        b[key] = as_list(b.get(key))
    sections = [str(s) for s in b.sections]
    problems = [f"unknown section {s!r}" for s in sections if s not in SECTIONS]
    for key in ("warmup", "batches", "loader_passes", "repeats"):
        if int(b[key]) < (0 if key == "warmup" else 1):
            problems.append(f"benchmark.{key}={b[key]} is too small")
    if "ddp" in sections and int(b.get("ddp_processes") or 0) < 2:
        problems.append(f"benchmark.ddp_processes={b.get('ddp_processes')} must be >= 2")
    if int(b.get("loader_pass_images") or 0) < 0:
        problems.append(f"benchmark.loader_pass_images={b.loader_pass_images} is negative")
    for amp in b.inference_amp:
        if str(amp).lower() not in AMP_MODES:
            problems.append(f"benchmark.inference_amp: {amp!r} is not one of {AMP_MODES}")
    if problems:
        raise ConfigError(
            "invalid benchmark configuration: " + "; ".join(problems) + f" (sections: {SECTIONS})"
        )
    check_data_root(cfg.data.root, cfg.data.metadata_file)
    return sections
