"""The benchmark run: build the model and data as training does, run the sections, report."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from derm_exp.data.metadata import CLASSES, load_metadata
from derm_exp.data.synthetic import resolve_data_root
from derm_exp.data.transforms import build_eval_transform, build_train_transform
from derm_exp.models.classifier import build_model
from derm_exp.perf import compare, ddp, inference, report, training
from derm_exp.perf.loader import loader_throughput
from derm_exp.perf.settings import check_benchmark_config
from derm_exp.perf.timing import environment, peak_memory
from derm_exp.runtime import resolve_device, resolve_precision, seed_everything

log = logging.getLogger(__name__)


def loader_section(cfg: DictConfig, data_config: dict, device: torch.device) -> dict[str, Any]:
    """JPEG vs cache, for the training transform (cfg.augment) and the eval transform."""
    frame = load_metadata(resolve_data_root(cfg.data), cfg.data.metadata_file)
    if cfg.benchmark.loader_images:
        frame = frame.head(int(cfg.benchmark.loader_images))
    frame = frame.reset_index(drop=True)
    out: dict[str, Any] = {
        "images": len(frame),
        "workers": int(cfg.data.num_workers),
        "batch_size": int(cfg.data.batch_size),
        "augment": str(cfg.augment.name),
        "pass_images_min": int(cfg.benchmark.get("loader_pass_images") or 0),
    }
    transforms = {
        "train": build_train_transform(cfg.augment, data_config),
        "eval": build_eval_transform(data_config),
    }
    for name, transform in transforms.items():
        runs = {
            kind: loader_throughput(
                frame,
                transform,
                cfg.data,
                cached=kind == "cached",
                batch_size=int(cfg.data.batch_size),
                passes=int(cfg.benchmark.loader_passes),
                pass_images=int(cfg.benchmark.get("loader_pass_images") or 0),
                device=device,
            )
            for kind in ("jpeg", "cached")
        }
        out[name] = {
            "jpeg_img_s": runs["jpeg"]["img_s"],
            "cached_img_s": runs["cached"]["img_s"],
            "cached_over_jpeg": runs["cached"]["img_s"] / runs["jpeg"]["img_s"],
            "jpeg_cpu_ms_per_image": runs["jpeg"]["cpu_ms_per_image"],
            "cached_cpu_ms_per_image": runs["cached"]["cpu_ms_per_image"],
            "cached_over_jpeg_cpu": runs["jpeg"]["cpu_ms_per_image"]
            / runs["cached"]["cpu_ms_per_image"],
            **runs,
        }
    train_cache = out["train"]["cached"]
    out["cache"] = {
        "build_s": train_cache["build_s"],
        "build_img_s": len(frame) / train_cache["build_s"],
        "bytes_per_image": train_cache["cache_bytes_per_image"],
        "train_resize": train_cache["cache_resize"],
        "eval_bytes_per_image": out["eval"]["cached"]["cache_bytes_per_image"],
        "eval_resize": out["eval"]["cached"]["cache_resize"],
        "note": "build_s includes hashing every file (data.cache_key) and decoding it once",
    }
    return out


def inference_section(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device, precision: Any, size: int
) -> dict[str, Any]:
    latencies, amp_check = _network_figures(
        cfg, model, model, device, precision, size, int(cfg.data.eval_batch_size)
    )
    return {**latencies, "amp_check": amp_check}


def _network_figures(
    cfg: DictConfig,
    net_model: torch.nn.Module,
    model: torch.nn.Module,
    device: torch.device,
    precision: Any,
    size: int,
    batch: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Latencies of ``net_model`` (the network as served, maybe compiled) and the agreement of
    ``model`` under ``precision`` with fp32."""
    b = cfg.benchmark
    latencies = inference.model_latencies(
        net_model,
        size,
        batch,
        list(cfg.tta.views),
        precision,
        device,
        int(b.warmup),
        int(b.repeats),
    )
    amp_check = inference.amp_agreement(model, size, int(cfg.data.batch_size), precision, device)
    return latencies, amp_check


def compare_section(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device, size: int
) -> dict[str, Any]:
    """Interleaved A/B timings: fp32 vs bf16 autocast, AdamW implementations, torch.compile."""
    b = cfg.benchmark
    rounds = int(b.compare_rounds)
    model.to(device, memory_format=torch.channels_last)
    batch = training.synthetic_batch(int(cfg.data.batch_size), size)
    out = {
        "amp": compare.compare_amp(model, batch, device, rounds),
        "adamw": compare.compare_adamw(model, device, rounds, cfg.trainer.grad_clip_norm),
    }
    if b.compare_compile:
        out["compile"] = compare.compare_compile(model, batch, device, rounds)
    return out


def run_benchmark(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run ``cfg.benchmark.sections``; write ``benchmark.json`` to ``output_dir``; print a table."""
    sections = check_benchmark_config(cfg)
    device, precision = _prepare(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    fresh = bool(cfg.benchmark.fresh_cache)
    cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=output_dir)) if fresh else None
    if cache_dir is not None:
        with open_dict(cfg):
            cfg.data.cache_dir = str(cache_dir)
    try:
        model = build_model(cfg.model, num_classes=len(CLASSES), image_size=cfg.data.image_size)
        size = int(model.data_config["input_size"][-1])
        result: dict[str, Any] = {
            "format": report.FORMAT,
            "environment": environment(device),
            "config": _config_summary(cfg, precision, size, sections),
        }
        result.update(_run_sections(cfg, sections, model, device, precision, size))
        result["memory"] = peak_memory(device)
        if "train" in result and "forward" in result:
            result["epoch_estimate"] = report.epoch_estimate(
                int(cfg.benchmark.dataset_images),
                float(cfg.data.val_fraction),
                float(cfg.data.test_fraction),
                result["train"]["real_loader_img_s"],
                result["forward"]["img_s"],
                2 if cfg.trainer.ema.enabled else 1,
            )
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    _write(cfg, result, output_dir)
    return result


def _prepare(cfg: DictConfig) -> tuple[torch.device, Any]:
    """Seed, thread count, device and autocast setting; peak-memory counters reset."""
    seed_everything(int(cfg.seed))
    if cfg.benchmark.get("threads"):
        torch.set_num_threads(int(cfg.benchmark.threads))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.trainer.amp, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return device, precision


def _config_summary(cfg: DictConfig, precision: Any, size: int, sections: list[str]) -> dict:
    """What was measured: model, sizes, data and benchmark settings."""
    return {
        "model": str(cfg.model.name),
        "head": str(cfg.model.head._target_).rsplit(".", 1)[-1],
        "image_size": size,
        "batch_size": int(cfg.data.batch_size),
        "eval_batch_size": int(cfg.data.eval_batch_size),
        "num_workers": int(cfg.data.num_workers),
        "augment": str(cfg.augment.name),
        "amp": str(precision.dtype).removeprefix("torch.") if precision.dtype else "off",
        "channels_last": bool(cfg.trainer.channels_last),
        "compile": str(cfg.trainer.get("compile", False)),
        "data_root": str(resolve_data_root(cfg.data)),
        "cache": bool(cfg.data.cache),
        "cache_scale": float(cfg.data.cache_scale),
        "warmup": int(cfg.benchmark.warmup),
        "batches": int(cfg.benchmark.batches),
        "repeats": int(cfg.benchmark.repeats),
        "sections": sections,
    }


def _run_sections(
    cfg: DictConfig,
    sections: list[str],
    model: torch.nn.Module,
    device: torch.device,
    precision: Any,
    size: int,
) -> dict[str, Any]:
    """The figures of each selected section, in the order loader, train, inference, compare,
    ddp."""
    out: dict[str, Any] = {}
    if "loader" in sections:
        log.info("benchmark: data loading (JPEG vs cache)")
        out["loader"] = loader_section(cfg, model.data_config, device)
    if "train" in sections:
        log.info("benchmark: training step and loop")
        out["train"] = training.train_section(cfg, model, device, precision, size)
    if "inference" in sections:
        log.info("benchmark: inference")
        out["inference"] = inference_section(cfg, model, device, precision, size)
        out["forward"] = {
            "batch_size": out["inference"]["batch_size"],
            "img_s": out["inference"]["batch_img_s"],
        }
        out["predictor"] = _predictor(cfg, model, device)
        for name, amp, compiled in inference_variants(cfg, precision, device):
            log.info("benchmark: inference variant %s", name)
            variants = out.setdefault("inference_variants", {})
            variants[name] = _variant_inference(cfg, model, device, amp, compiled, size)
    if "compare" in sections:
        log.info("benchmark: option comparisons (AMP, AdamW, compile)")
        out["compare"] = compare_section(cfg, model, device, size)
    if "ddp" in sections:
        log.info("benchmark: training loop in 1 vs %s DDP processes", cfg.benchmark.ddp_processes)
        out["ddp"] = ddp.ddp_section(cfg, device)
    if "backend" in sections:
        from derm_exp.perf.backends import backend_section

        log.info("benchmark: inference backends (torch fp32/bf16/compiled, ONNX Runtime fp32/int8)")
        out["backend"] = backend_section(cfg, model, size)
    if "exports" in sections:
        from derm_exp.perf.exports import exports_section

        log.info("benchmark: ONNX export of each backbone")
        out["exports"] = exports_section(cfg)
    return out


def _write(cfg: DictConfig, result: dict[str, Any], output_dir: Path) -> None:
    """``benchmark.json``, the printed table and, with ``mlflow.enabled``, an MLflow run."""
    path = output_dir / "benchmark.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(report.table(result))
    print(f"\nbenchmark JSON: {path}")
    if cfg.mlflow.enabled:
        run_id = report.log_to_mlflow(result, cfg.tracking, str(path))
        print(f"MLflow run id: {run_id} (experiment {cfg.tracking.experiment_name})")


def _predictor(
    cfg: DictConfig,
    model: torch.nn.Module,
    device: torch.device,
    amp: str | None = None,
    ensemble_members: int | None = None,
    compiled: bool = False,
    batch_images: int | None = None,
) -> dict[str, Any]:
    paths = load_metadata(resolve_data_root(cfg.data), cfg.data.metadata_file)["path"]
    b = cfg.benchmark
    n = int(cfg.data.eval_batch_size) if batch_images is None else batch_images
    return inference.predictor_latencies(
        model,
        model.data_config,
        [str(p) for p in paths[:n]],
        str(cfg.tta.mode),
        int(b.ensemble_members) if ensemble_members is None else ensemble_members,
        device,
        int(b.warmup),
        int(b.repeats),
        amp=str(cfg.trainer.amp) if amp is None else amp,
        compile=compiled,
    )


def inference_variants(
    cfg: DictConfig, precision: Any, device: torch.device
) -> list[tuple[str, str, bool]]:
    """``(name, amp, compiled)`` for every extra inference setting: each of
    ``benchmark.inference_amp`` that differs from ``trainer.amp``, then, with
    ``benchmark.inference_compile``, the compiled network under ``trainer.amp`` and each of them.
    """
    base = str(cfg.trainer.amp)
    amps = [
        str(a)
        for a in cfg.benchmark.get("inference_amp") or []
        if resolve_precision(str(a), device).dtype != precision.dtype
    ]
    out = [(a, a, False) for a in amps]
    if cfg.benchmark.get("inference_compile"):
        out += [("compile", base, True)] + [(f"compile+{a}", a, True) for a in amps]
    return out


def _variant_inference(
    cfg: DictConfig,
    model: torch.nn.Module,
    device: torch.device,
    amp: str,
    compiled: bool,
    size: int,
) -> dict[str, Any]:
    """The inference latencies again under another autocast setting and/or compiled (same run,
    same weights). Compiled variants use batches of one and of the TTA views only (each new
    input shape compiles again); their first call, compilation included, is reported apart."""
    from derm_exp.inference.predictor import compile_for_inference

    precision = resolve_precision(amp, device)
    views = list(cfg.tta.views)
    if compiled:
        torch._dynamo.reset()  # each compiled variant compiles afresh: independent figures
    net_model = compile_for_inference(model) if compiled else model
    out: dict[str, Any] = {"amp": amp, "compiled": compiled}
    if compiled:
        out["first_call_s"] = inference.first_call_seconds(net_model, size, precision, device)
    batch = len(views) if compiled else int(cfg.data.eval_batch_size)
    out["network"], out["amp_check"] = _network_figures(
        cfg, net_model, model, device, precision, size, batch
    )
    out["predictor"] = _predictor(
        cfg,
        model,
        device,
        amp=amp,
        ensemble_members=0,
        compiled=compiled,
        batch_images=len(views) if compiled else None,
    )
    return out
