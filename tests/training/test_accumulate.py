"""``trainer.accumulate_grad_batches``: k batches of b train like one batch of k x b (weights,
EMA, LR schedule per optimizer step, the epoch's last partial group), its validation, and a
2-process torchrun with accumulation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset

from derm_exp.errors import ConfigError
from derm_exp.runtime import resolve_precision
from derm_exp.training.loop import StepContext, optimizer_steps, train_one_epoch
from derm_exp.training.schedulers import BatchScheduler
from derm_exp.training.validate import validate_config
from tests.conftest import compose_train


class RecordingScheduler(BatchScheduler):
    """A halving LR per optimizer update, recording the updates it was stepped to."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__("halving", torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 0.5**u))
        self.updates: list[int] = []

    def step(self, update: int) -> None:
        self.updates.append(update)
        super().step(update)


def _train(batch_size: int, accumulate: int) -> tuple[dict, dict, list[int], dict]:
    """One epoch of a linear classifier (no BatchNorm: the batch split cannot matter) over 40
    fixed samples: 16+16+8 at batch 16, or 5 batches of 8 (the last group has one batch)."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    model = torch.nn.Linear(4, 3)
    ema = ModelEmaV3(model, decay=0.9, use_warmup=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    scheduler = RecordingScheduler(optimizer)
    cpu = torch.device("cpu")
    ctx = StepContext(
        device=cpu,
        precision=resolve_precision("off", cpu),
        channels_last=False,
        grad_clip_norm=0.5,  # clips the accumulated gradient, as one big batch's
        log_every_n_steps=100,
        accumulate_grad_batches=accumulate,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    means = train_one_epoch(
        model,
        loader,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        scheduler,
        ctx,
        first_update=0,
        epoch=1,
        ema=ema,
    )
    return model.state_dict(), ema.module.state_dict(), scheduler.updates, means


def test_accumulating_two_batches_of_8_equals_batches_of_16() -> None:
    weights16, ema16, updates16, means16 = _train(16, 1)
    weights8, ema8, updates8, means8 = _train(8, 2)
    assert updates16 == updates8 == [0, 1, 2]  # 3 optimizer steps: the partial group steps
    assert optimizer_steps(5, 2) == 3
    tolerance = {"rtol": 0, "atol": 1e-6}  # float32 sums in a different order
    for key in weights16:
        torch.testing.assert_close(weights8[key], weights16[key], **tolerance)
        torch.testing.assert_close(ema8[key], ema16[key], **tolerance)
    assert means8["loss"] == pytest.approx(means16["loss"], abs=1e-6)
    assert means8["accuracy"] == means16["accuracy"]
    # And accumulation is not a no-op: batches of 8 stepped one by one train differently.
    weights8_plain, _, updates8_plain, _ = _train(8, 1)
    assert updates8_plain == [0, 1, 2, 3, 4]
    assert not torch.allclose(weights8_plain["weight"], weights16["weight"], atol=1e-4)


@pytest.mark.parametrize("value", [0, -1, 1.5, "two"])
def test_accumulate_grad_batches_must_be_a_positive_integer(value: object) -> None:
    cfg = compose_train([f"trainer.accumulate_grad_batches={value}"])
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches"):
        validate_config(cfg)


def test_accumulate_grad_batches_defaults_to_one() -> None:
    cfg = compose_train([])
    assert cfg.trainer.accumulate_grad_batches == 1
    validate_config(cfg)


@pytest.mark.slow
def test_two_processes_with_accumulation_finish(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["-m", "derm_exp.train", "experiment=demo", "trainer.max_epochs=1"]
    cmd += [
        "trainer.accumulate_grad_batches=2",
        "data.batch_size=8",
        "evaluation.n_boot=0",
        "data.num_workers=0",
        "registry.enabled=false",
        "explain.gallery=false",  # not what this test is about
        f"data.demo.dir={tmp_path / 'demo'}",
        "data.demo.n_images=120",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_root={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.global_batch_size"] == "32"  # 8 per rank x 2 ranks x 2
    assert run.data.params["trainer.accumulate_grad_batches"] == "2"
