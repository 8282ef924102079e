"""``torchrun --nproc_per_node=2 -m derm_exp.train experiment=demo`` on CPU (gloo): one model,
one MLflow run, one set of outputs, validation identical to a single-process evaluation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from derm_exp.data.metadata import CLASSES
from derm_exp.evaluation.metrics import classification_metrics, scalar_metrics
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.models.classifier import build_model
from derm_exp.runtime import resolve_precision
from derm_exp.training.data_setup import build_loaders, split_frame
from derm_exp.training.loop import StepContext, predict_logits

pytestmark = pytest.mark.slow


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The README's CPU check command, on a tmp store and generated demo data."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["-m", "derm_exp.train", "experiment=demo", "trainer.max_epochs=2"]
    cmd += [
        "evaluation.n_boot=0",
        "data.num_workers=0",
        f"data.demo.dir={tmp_path / 'demo'}",
        "data.demo.n_images=120",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_root={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'out'}",
        *args,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _only_run(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def _single_process_val_metrics(best_path: Path) -> dict[str, float]:
    """The saved best weights evaluated on the whole validation split by one process."""
    ck = load_checkpoint(best_path)
    cfg = OmegaConf.create(ck["config"])
    model = build_model(cfg.model, num_classes=len(CLASSES), image_size=cfg.data.image_size)
    model.load_state_dict(ck["model"])
    device = torch.device("cpu")
    loaders = build_loaders(split_frame(cfg.data), cfg.data, cfg.augment, model.data_config, device)
    ctx = StepContext(device=device, precision=resolve_precision("off", device))
    logits, labels = predict_logits(model, loaders.val, ctx)
    assert len(labels) == len(loaders.val.dataset)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    flat = scalar_metrics(classification_metrics(labels, probs, CLASSES))
    return {"n": float(len(labels)), **flat}


def test_two_processes_train_one_model(tmp_path: Path) -> None:
    proc = _torchrun(tmp_path, "registry.allow_degenerate=true")  # 2 epochs: maybe one class
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert len(re.findall(r"MLflow run id: [0-9a-f]{32}", proc.stdout)) == 1

    client, run = _only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.ddp_world_size"] == "2"
    assert run.data.tags["derm_exp.global_batch_size"] == "64"  # demo batch 32 per rank x 2
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1, 2]
    versions = client.search_model_versions("name='derm-classifier'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    # One output folder: rank 0's; the other rank created no folder, config dump or log.
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.pt")) == [
        "checkpoint_best.pt",
        "checkpoint_latest.pt",
    ]
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "train.log").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "mlflow.db", "mlruns", "out"]

    # Sharded, gathered validation == one process evaluating the saved weights.
    best_path = out / "checkpoint_best.pt"
    step = int(load_checkpoint(best_path)["best"]["epoch"]) + 1
    expected = _single_process_val_metrics(best_path)
    assert expected["n"] == len((out / "splits" / "val.csv").read_text().splitlines()) - 1
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "nll", "brier", "ece"):
        history = client.get_metric_history(run.info.run_id, f"val/{key}")
        (logged,) = [m.value for m in history if m.step == step]
        np.testing.assert_allclose(logged, expected[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_time_budget_on_rank_zero_stops_both_ranks(tmp_path: Path) -> None:
    proc = _torchrun(
        tmp_path,
        "trainer.max_epochs=4",
        "trainer.max_time_minutes=0.001",  # exceeded by the first epoch
        "trainer.ddp_timeout_s=120",  # a rank left waiting fails the run within 2 min
        "registry.enabled=false",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    client, run = _only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.stopped_by"] == "time_budget"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1]
    assert load_checkpoint(tmp_path / "out" / "checkpoint_latest.pt")["epoch"] == 0
