"""Resume across world sizes: the same number of processes continues exactly (a 2-process run
stopped after epoch 1 and resumed logs the epoch-2 metrics of an uninterrupted one); another
number continues with one warning that the data order changes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from derm_exp.models.checkpoint import load_checkpoint, save_checkpoint
from derm_exp.training.trainer import fit


def _torchrun(tmp_path: Path, store: str, out: str, *args: str) -> None:
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # the same float reductions in every run
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["-m", "derm_exp.train", "experiment=demo", "trainer.max_epochs=2"]
    cmd += [
        "evaluation.n_boot=0",
        "data.num_workers=0",
        "registry.enabled=false",
        "tta=none",
        "explain.gallery=false",  # not what this test is about
        f"data.demo.dir={tmp_path / 'demo'}",
        "data.demo.n_images=120",
        f"tracking.uri=sqlite:///{tmp_path / store}",
        f"tracking.artifact_root={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / out}",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _history(tmp_path: Path, store: str) -> dict[str, dict[int, float]]:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / store}")
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    keys = ("train/loss", "train/accuracy", "val/loss", "val/balanced_accuracy", "val/macro_f1")
    return {
        k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in keys
    }


@pytest.mark.slow
def test_two_process_resume_continues_exactly(tmp_path: Path) -> None:
    _torchrun(tmp_path, "whole.db", "whole")
    # Stopped by the time budget after epoch 1, then resumed with the budget lifted.
    _torchrun(tmp_path, "split.db", "first", "trainer.max_time_minutes=0.001")
    assert load_checkpoint(tmp_path / "first" / "checkpoint_latest.pt")["epoch"] == 0
    _torchrun(
        tmp_path,
        "split.db",
        "second",
        f"resume={tmp_path / 'first' / 'checkpoint_latest.pt'}",
        "trainer.max_time_minutes=1000",
    )
    whole, split = _history(tmp_path, "whole.db"), _history(tmp_path, "split.db")
    for key, steps in whole.items():
        assert sorted(split[key]) == sorted(steps) == [1, 2], key
        assert split[key][2] == pytest.approx(steps[2], rel=1e-6, abs=1e-7), key


def test_resume_with_another_world_size_warns_once(
    tiny_cfg: DictConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
    fit(tiny_cfg, tmp_path / "first")
    latest = tmp_path / "first" / "checkpoint_latest.pt"
    ck = load_checkpoint(latest)
    assert ck["world_size"] == 1
    save_checkpoint({**ck, "world_size": 2}, latest)  # as a 2-process run writes it
    with open_dict(tiny_cfg):
        tiny_cfg.resume = str(latest)
        tiny_cfg.trainer.max_epochs = 2
        tiny_cfg.trainer.ddp_timeout_s = 60  # changeable on resume: it changes no result
    overrides = [f"resume={latest}", "trainer.max_epochs=2", "trainer.ddp_timeout_s=60"]
    with caplog.at_level(logging.WARNING, logger="derm_exp"):
        fit(tiny_cfg, tmp_path / "second", overrides=overrides)
    warnings = [r.getMessage() for r in caplog.records if "process(es)" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "trained with 2 process(es) on 1" in warnings[0]
    assert "data order" in warnings[0] and "not an exact continuation" in warnings[0]
    assert load_checkpoint(tmp_path / "second" / "checkpoint_latest.pt")["world_size"] == 1
