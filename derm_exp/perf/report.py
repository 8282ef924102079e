"""The benchmark report: derived figures (ratios, epoch estimate), a text table, MLflow logging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

FORMAT = "derm_exp.benchmark/1"


def epoch_estimate(
    n_images: int,
    val_fraction: float,
    test_fraction: float,
    train_img_s: float,
    eval_img_s: float,
    eval_passes: int,
) -> dict[str, Any]:
    """Seconds for one HAM10000 epoch: the training split at the real-loader training rate plus
    ``eval_passes`` validation passes (raw and EMA weights) at the batched forward rate."""
    n_train = round(n_images * (1 - val_fraction - test_fraction))
    n_val = round(n_images * val_fraction)
    train_s = n_train / train_img_s
    val_s = eval_passes * n_val / eval_img_s
    return {
        "dataset_images": n_images,
        "train_images": n_train,
        "val_images": n_val,
        "val_passes": eval_passes,
        "train_s": train_s,
        "val_s": val_s,
        "total_s": train_s + val_s,
        "basis": (
            f"{n_train} training images (= {n_images} x (1 - {val_fraction} - {test_fraction})) "
            f"at the real-loader training rate + {eval_passes} x {n_val} validation images at "
            "the batched forward rate"
        ),
    }


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


ROWS = (
    ("loader.train.jpeg_img_s", "data loader, train transform, JPEG decode", "img/s"),
    ("loader.train.cached_img_s", "data loader, train transform, cache", "img/s"),
    ("loader.train.cached_over_jpeg", "  cached / JPEG", "x"),
    ("loader.train.jpeg_cpu_ms_per_image", "  CPU time per image, JPEG decode", "ms"),
    ("loader.train.cached_cpu_ms_per_image", "  CPU time per image, cache", "ms"),
    ("loader.train.cached_over_jpeg_cpu", "  JPEG / cache CPU time", "x"),
    ("loader.eval.jpeg_img_s", "data loader, eval transform, JPEG decode", "img/s"),
    ("loader.eval.cached_img_s", "data loader, eval transform, cache", "img/s"),
    ("loader.eval.cached_over_jpeg", "  cached / JPEG", "x"),
    ("loader.eval.jpeg_cpu_ms_per_image", "  CPU time per image, JPEG decode", "ms"),
    ("loader.eval.cached_cpu_ms_per_image", "  CPU time per image, cache", "ms"),
    ("loader.eval.cached_over_jpeg_cpu", "  JPEG / cache CPU time", "x"),
    ("loader.cache.build_img_s", "cache build (decode + resize, once)", "img/s"),
    ("loader.cache.bytes_per_image", "cache size per training image", "bytes"),
    ("train.step.forward_ms", "train step: forward + loss", "ms"),
    ("train.step.backward_ms", "train step: backward", "ms"),
    ("train.step.optimizer_ms", "train step: clip + optimizer", "ms"),
    ("train.step.ema_ms", "train step: EMA update", "ms"),
    ("train.step.first_step_s", "first step (init/compile)", "s"),
    ("train.synthetic_img_s", "training loop, synthetic tensors", "img/s"),
    ("train.real_loader_img_s", "training loop, real data loader", "img/s"),
    ("train.real_over_synthetic", "  real / synthetic", "x"),
    ("train.synthetic_cpu_ms_per_image", "  CPU time per image, synthetic", "ms"),
    ("forward.img_s", "forward (eval, batched)", "img/s"),
    ("inference.single_ms", "latency: 1 image (network)", "ms"),
    ("inference.batch_ms", "latency: one eval batch (network)", "ms"),
    ("inference.tta_batched_ms", "latency: TTA views, one forward", "ms"),
    ("inference.tta_serial_ms", "latency: TTA views, one forward each", "ms"),
    ("predictor.single_ms", "predictor: JPEG -> probabilities", "ms"),
    ("predictor.tta_ms", "predictor: JPEG -> TTA (batched views)", "ms"),
    ("predictor.ensemble_single_ms", "ensemble: JPEG -> probabilities", "ms"),
    ("compare.amp.fp32_fwd_bwd_ms", "A/B: forward+backward fp32", "ms"),
    ("compare.amp.bf16_fwd_bwd_ms", "A/B: forward+backward bf16 autocast", "ms"),
    ("compare.adamw.default_ms", "A/B: clip + AdamW step, torch default", "ms"),
    ("compare.adamw.foreach_ms", "A/B: clip + AdamW step, foreach", "ms"),
    ("compare.adamw.fused_ms", "A/B: clip + AdamW step, fused", "ms"),
    ("compare.compile.compile_first_step_s", "A/B: torch.compile first step", "s"),
    ("compare.compile.eager_fwd_bwd_ms", "A/B: forward+backward eager", "ms"),
    ("compare.compile.compiled_fwd_bwd_ms", "A/B: forward+backward compiled", "ms"),
    ("ddp.single_img_s", "DDP: training loop, 1 process", "img/s"),
    ("ddp.multi_img_s", "DDP: training loop, N processes (global)", "img/s"),
    ("ddp.multi_over_single", "  N processes / 1 process", "x"),
    ("memory.peak_rss_mb", "peak RSS (main process)", "MB"),
    ("memory.peak_rss_children_mb", "peak RSS (largest child, e.g. a worker)", "MB"),
    ("memory.cuda_max_allocated_mb", "peak CUDA memory", "MB"),
    ("epoch_estimate.total_s", "estimated HAM10000 epoch", "s"),
)


# Rows repeated for every extra inference setting (benchmark.inference_amp / inference_compile).
VARIANT_ROWS = (
    ("first_call_s", "first call (compilation)", "s"),
    ("network.single_ms", "latency, 1 image (network)", "ms"),
    ("network.batch_img_s", "forward (eval, batched)", "img/s"),
    ("network.tta_batched_ms", "latency, TTA views, one forward", "ms"),
    ("predictor.single_ms", "predictor: JPEG -> probabilities", "ms"),
    ("predictor.tta_ms", "predictor: JPEG -> TTA", "ms"),
    ("amp_check.argmax_agreement", "argmax agreement with fp32", ""),
)


def table(result: dict[str, Any]) -> str:
    """The headline figures as an aligned text table (missing figures are left out)."""
    flat = dict(flatten(result))
    rows = list(ROWS)
    for name in result.get("inference_variants", {}):
        rows += [
            (f"inference_variants.{name}.{k}", f"[{name}] {lb}", u) for k, lb, u in VARIANT_ROWS
        ]
    from derm_exp.perf import backends, exports

    rows += backends.table_rows(result) + exports.table_rows(result)
    lines = []
    for key, label, unit in rows:
        value = flat.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
            lines.append(f"{label:<44} {shown:>12} {unit}")
    return "\n".join(lines)


def log_to_mlflow(result: dict[str, Any], tracking: Any, json_path: str) -> str:
    """Log the figures as metrics (dotted names) and the JSON as an artifact; return the run id."""
    import mlflow

    from derm_exp.tracking.mlflow_run import setup_experiment

    experiment_id = setup_experiment(tracking.uri, tracking.experiment_name, tracking.artifact_root)
    flat = dict(flatten(result))
    with mlflow.start_run(experiment_id=experiment_id, run_name="benchmark") as run:
        mlflow.set_tags({"derm_exp.kind": "benchmark", "backbone": flat.get("config.model")})
        mlflow.log_params({k[7:]: v for k, v in flat.items() if k.startswith("config.")})
        mlflow.log_metrics(
            {
                k: float(v)
                for k, v in flat.items()
                if isinstance(v, int | float)
                and not isinstance(v, bool)
                and not k.startswith(("config.", "environment."))
            }
        )
        mlflow.log_artifact(json_path)
        return run.info.run_id
