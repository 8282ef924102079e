"""``python -m derm_exp.benchmark`` end to end on a tiny model, in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli import run_module
from tests.tiny import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]

# Every figure the report promises (dotted paths into benchmark.json), numbers > 0.
FIGURES = [
    "loader.train.jpeg_img_s",
    "loader.train.cached_img_s",
    "loader.train.cached_over_jpeg",
    "loader.eval.jpeg_img_s",
    "loader.eval.cached_img_s",
    "loader.eval.cached_over_jpeg",
    "loader.train.jpeg_cpu_ms_per_image",
    "loader.train.cached_cpu_ms_per_image",
    "loader.eval.cached_over_jpeg_cpu",
    "loader.cache.build_s",
    "loader.cache.bytes_per_image",
    "loader.cache.eval_bytes_per_image",
    "train.step.forward_ms",
    "train.step.backward_ms",
    "train.step.optimizer_ms",
    "train.step.ema_ms",
    "train.step.total_ms",
    "train.step.img_s",
    "train.step.first_step_s",
    "train.synthetic_img_s",
    "train.real_loader_img_s",
    "train.real_over_synthetic",
    "train.synthetic_cpu_ms_per_image",
    "forward.img_s",
    "inference.single_ms",
    "inference.batch_ms",
    "inference.batch_img_s",
    "inference.tta_batched_ms",
    "inference.tta_serial_ms",
    "predictor.single_ms",
    "predictor.tta_ms",
    "predictor.batch_img_s",
    "predictor.ensemble_single_ms",
    "predictor.ensemble_tta_ms",
    "inference_variants.bf16.network.single_ms",
    "inference_variants.bf16.network.tta_batched_ms",
    "inference_variants.bf16.predictor.single_ms",
    "inference_variants.bf16.predictor.tta_ms",
    "inference_variants.bf16.amp_check.logit_scale",
    "compare.amp.fp32_fwd_bwd_ms",
    "compare.amp.bf16_fwd_bwd_ms",
    "compare.amp.bf16_argmax_agreement",
    "compare.adamw.default_ms",
    "compare.adamw.foreach_ms",
    "compare.adamw.fused_ms",
    "memory.peak_rss_mb",
    "epoch_estimate.train_s",
    "epoch_estimate.val_s",
    "epoch_estimate.total_s",
]


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return run_module("derm_exp.benchmark", *args, cwd=ROOT, timeout=300)


def lookup(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_benchmark_runs_end_to_end_and_reports_every_figure(demo_data: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = run_benchmark(
        *TINY_MODEL,
        f"data.root={demo_data}",
        "data.num_workers=0",
        "data.eval_batch_size=8",
        "device=cpu",
        "benchmark.batches=2",
        "benchmark.warmup=1",
        "benchmark.repeats=2",
        "benchmark.loader_passes=1",
        "benchmark.loader_images=48",
        "benchmark.loader_pass_images=100",
        "benchmark.threads=1",
        "benchmark.sections=[loader,train,inference,compare]",
        "benchmark.inference_amp=bf16",  # one value for a list setting: [bf16]
        "benchmark.compare_rounds=1",
        "mlflow.enabled=true",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_root={tmp_path}/mlruns",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    for figure in FIGURES:
        value = lookup(result, figure)
        assert isinstance(value, int | float) and value > 0, (figure, value)
    assert result["config"]["model"] == "test_efficientnet" and result["config"]["image_size"] == 32
    assert result["loader"]["images"] == 48 and result["train"]["cached"] is True
    assert result["loader"]["train"]["cached"]["images_per_pass"] == 144  # 48 x 3 >= 100
    assert result["inference"]["tta_views"] == 8  # tta=medium: the 8 symmetries
    assert result["epoch_estimate"]["train_images"] == 7010
    assert "[bf16] latency, 1 image (network)" in proc.stdout
    assert "real / synthetic" in proc.stdout and str(out / "benchmark.json") in proc.stdout
    assert not list(out.glob("cache-*")), "the fresh cache is removed afterwards"
    assert "MLflow run id:" in proc.stdout

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("derm_exp_benchmark").experiment_id])
    assert run.data.tags["derm_exp.kind"] == "benchmark"
    assert run.data.metrics["train.real_over_synthetic"] == pytest.approx(
        result["train"]["real_over_synthetic"]
    )


def test_benchmark_reports_config_mistakes_without_traceback(tmp_path: Path) -> None:
    proc = run_benchmark(
        "benchmark.sections=[loader,gpu]",
        "benchmark.inference_amp=[bf17]",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 1
    assert "unknown section 'gpu'" in proc.stderr and "Traceback" not in proc.stderr
    assert "'bf17' is not one of" in proc.stderr
    proc = run_benchmark("benchmark.batchez=3")
    assert proc.returncode == 2 and "batchez" in proc.stderr


def test_benchmark_help_lists_usage() -> None:
    proc = run_benchmark("--help")
    assert proc.returncode == 0
    assert "derm_exp.benchmark" in proc.stdout and "benchmark.json" in proc.stdout


def test_a_single_value_is_accepted_where_a_list_is_expected() -> None:
    """``benchmark.inference_amp=bf16`` used to be iterated letter by letter ('b' is not ...)."""
    proc = run_benchmark(
        "benchmark.inference_amp=bf16", "benchmark.sections=loader", "--cfg", "job"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "  sections:\n  - loader\n" in proc.stdout
    assert "  inference_amp:\n  - bf16\n" in proc.stdout


def test_the_settings_check_turns_single_values_into_lists() -> None:
    from derm_exp.perf.settings import check_benchmark_config
    from tests.conftest import compose_train

    cfg = compose_train(
        ["benchmark.sections=inference", "benchmark.inference_amp=bf16"], config_name="benchmark"
    )
    assert cfg.benchmark.inference_amp == "bf16"  # as plain Hydra stores it
    assert check_benchmark_config(cfg) == ["inference"]
    assert list(cfg.benchmark.inference_amp) == ["bf16"]


def test_the_benchmark_times_the_training_setup_of_a_run(demo_data: Path, tmp_path: Path) -> None:
    """The train section uses the trainer's own setup: the loss with its class weights, and the
    all-layers stage at trainer.finetune_lr after a frozen-backbone stage."""
    from derm_exp.data.metadata import CLASSES
    from derm_exp.models.classifier import build_model
    from derm_exp.training.data_setup import split_frame
    from derm_exp.training.losses import loss_class_weights
    from tests.conftest import compose_train

    args = [
        *TINY_MODEL,
        f"data.root={demo_data}",
        "loss=focal",
        "loss.class_weights=inverse_frequency",
        "trainer.freeze_backbone_epochs=2",
        "trainer.finetune_lr=1e-4",
    ]
    out = tmp_path / "out"
    proc = run_benchmark(
        *args,
        "data.num_workers=0",
        "device=cpu",
        "benchmark.sections=[train]",
        "benchmark.batches=1",
        "benchmark.warmup=0",
        "benchmark.threads=1",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = json.loads((out / "benchmark.json").read_text())["train"]
    cfg = compose_train(args, config_name="benchmark")
    frame = split_frame(cfg.data)
    labels = frame.loc[frame["split"] == "train", "label"].to_numpy()
    expected = loss_class_weights(cfg.loss, labels)
    assert train["loss"]["name"] == "FocalLoss"
    assert train["loss"]["class_weights"] == pytest.approx(expected.tolist())
    assert len(set(train["loss"]["class_weights"])) > 1  # really weighted
    assert train["stage"] == "all layers" and train["optimizer"]["lr"] == pytest.approx(1e-4)
    model = build_model(cfg.model, num_classes=len(CLASSES), image_size=32)
    assert train["trainable_parameters"] == sum(p.numel() for p in model.parameters())
