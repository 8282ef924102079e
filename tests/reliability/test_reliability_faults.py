"""Faults: kills, Ctrl-C, unreachable or failing stores, NaN. No training state is ever lost."""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from derm_exp.errors import StorageError
from derm_exp.models.checkpoint import load_checkpoint, save_checkpoint
from derm_exp.tracking.mlflow_run import TrackingError
from derm_exp.training.loop import NonFiniteLossError
from tests.reliability.helpers import (
    ROOT,
    cli_args,
    cli_env,
    run_train,
    start_train,
    tail,
    wait_for,
)


def _runs(uri: str, experiment: str = "derm_exp") -> list:
    """Runs of ``experiment`` in the store at ``uri`` (the CLI tests use the default name)."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# --- kills ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(
    tmp_path: Path, rel_data: Path, db_template: Path
) -> None:
    """SIGKILL after epoch 1 of 3, then resume=<checkpoint>: same MLflow run, and (CPU,
    deterministic=true) final weights bit-identical to an uninterrupted run's."""
    extra = ["trainer.max_epochs=3", "deterministic=true"]
    for name in ("ref", "int"):
        (tmp_path / name).mkdir()
        shutil.copy(db_template, tmp_path / name / "mlflow.db")
    ref_args = [*cli_args(tmp_path / "ref", rel_data), *extra]
    args = [*cli_args(tmp_path / "int", rel_data), *extra]
    ref = start_train(ref_args, tmp_path / "ref.log")  # runs beside the victim (1 thread each)
    victim = start_train(args, tmp_path / "victim.log")
    latest = tmp_path / "int" / "out" / "checkpoint_latest.pt"
    wait_for(latest.is_file, victim, tmp_path / "victim.log")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL
    killed_at = load_checkpoint(latest)["epoch"]
    assert killed_at < 2, "the run finished before it could be killed"
    uri = f"sqlite:///{tmp_path / 'int'}/mlflow.db"
    (dead,) = _runs(uri)
    assert dead.info.status == "RUNNING"  # SIGKILL leaves no chance to close it

    resumed = run_train(
        [*cli_args(tmp_path / "int", rel_data, "resumed"), *extra, f"resume={latest}"]
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert ref.wait(600) == 0, tail(tmp_path / "ref.log")

    (run,) = _runs(uri)
    assert run.info.run_id == dead.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.resumed_at_epoch"] == str(killed_at + 1)
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val/loss")]
    assert steps == [1, 2, 3]
    mine = load_checkpoint(tmp_path / "int" / "resumed" / "checkpoint_latest.pt")
    theirs = load_checkpoint(tmp_path / "ref" / "out" / "checkpoint_latest.pt")
    assert mine["epoch"] == theirs["epoch"] == 2
    for part in ("model", "ema"):
        assert mine[part].keys() == theirs[part].keys()
        for key, tensor in theirs[part].items():
            assert torch.equal(mine[part][key], tensor), f"{part}.{key} differs"


WRITER = textwrap.dedent(
    """
    import sys, torch
    from derm_exp.models.checkpoint import save_checkpoint
    step = 0
    while True:  # ~32 MB per checkpoint, each value = its step number
        save_checkpoint({"step": step, "w": torch.full((8_000_000,), float(step))}, sys.argv[1])
        print(step, flush=True)
        step += 1
    """
)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path) -> None:
    """Killed while the temp file of a new checkpoint is open: the last complete checkpoint is
    still there and loads intact."""
    path = tmp_path / "checkpoint_latest.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "0"  # one complete checkpoint exists
        proc.stdout.readline()  # and a second one: now kill during the third write
        while not list(tmp_path.glob(".checkpoint_latest.pt.*.tmp")):
            assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert list(tmp_path.glob(".checkpoint_latest.pt.*.tmp")), "not killed mid-write"
    ck = load_checkpoint(path)
    assert ck["step"] >= 1 and torch.equal(ck["w"], torch.full((8_000_000,), float(ck["step"])))


def test_failed_checkpoint_write_leaves_previous_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while writing: the error surfaces, the old file and no temp file remain."""
    path = save_checkpoint({"step": 1, "w": torch.ones(4)}, tmp_path / "ck.pt")

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


@pytest.mark.slow
def test_ctrl_c_stops_saves_marks_killed_and_exits_130(
    tmp_path: Path, rel_data: Path, db_template: Path
) -> None:
    shutil.copy(db_template, tmp_path / "mlflow.db")
    args = [*cli_args(tmp_path, rel_data), "trainer.max_epochs=20"]
    proc = start_train(args, tmp_path / "train.log")
    latest = tmp_path / "out" / "checkpoint_latest.pt"
    wait_for(latest.is_file, proc, tmp_path / "train.log")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130, tail(tmp_path / "train.log")
    log = (tmp_path / "train.log").read_text()
    assert "Traceback" not in log
    assert "interrupted" in log and f"resume={latest}" in log
    (run,) = _runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "KILLED"
    ck = load_checkpoint(latest)
    assert ck["run_id"] == run.info.run_id and ck["epoch"] < 19 and _finite(ck["model"])
    logged = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/checkpoint_latest.pt" in logged


# --- tracking store ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_tracking_server_fails_before_training(tmp_path: Path, rel_data: Path) -> None:
    uri = f"http://alice:hunter2@127.0.0.1:{_closed_port()}"
    result = run_train([*cli_args(tmp_path, rel_data), f"tracking.uri={uri}"])
    assert result.returncode == 1
    masked = uri.replace("hunter2", "***")
    assert f"error: MLflow tracking server {masked} is unreachable" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out" / "checkpoint_latest.pt").exists()
    assert "epoch 1/" not in result.stdout + result.stderr


def test_unwritable_artifact_root_fails_before_training(
    rel_cfg: DictConfig, tmp_path: Path
) -> None:
    """A path under a regular file cannot be created (what a read-only mount gives as root)."""
    from derm_exp.training.trainer import fit

    (tmp_path / "a_file").write_text("")
    with open_dict(rel_cfg):
        rel_cfg.tracking.artifact_root = str(tmp_path / "a_file" / "mlruns")
    with pytest.raises(TrackingError, match=r"artifact folder .*a_file.* is not writable"):
        fit(rel_cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoint_latest.pt").exists()
    assert _runs(rel_cfg.tracking.uri, rel_cfg.tracking.experiment_name) == []


def test_artifact_store_failure_keeps_state_and_resume_finishes(
    rel_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk of the artifact store fills up when the checkpoints are logged: a clear error
    naming the local checkpoint and the resume command; resuming then completes the run."""
    from derm_exp.training.trainer import fit

    real = mlflow.log_artifact

    def full(local_path, artifact_path=None, *args, **kwargs):
        if artifact_path == "checkpoints":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(local_path, artifact_path, *args, **kwargs)

    monkeypatch.setattr(mlflow, "log_artifact", full)
    latest = tmp_path / "out" / "checkpoint_latest.pt"
    with pytest.raises(StorageError) as info:
        fit(rel_cfg, tmp_path / "out")
    message = str(info.value)
    assert "No space left on device" in message
    assert f"resume={latest}" in message
    (run,) = _runs(rel_cfg.tracking.uri, rel_cfg.tracking.experiment_name)
    assert run.info.status == "FAILED"
    assert load_checkpoint(latest)["epoch"] == 1  # both epochs are safe on disk

    monkeypatch.undo()
    with open_dict(rel_cfg):
        rel_cfg.resume = str(latest)
    fit(rel_cfg, tmp_path / "resumed", overrides=[f"resume={latest}"])
    (run,) = _runs(rel_cfg.tracking.uri, rel_cfg.tracking.experiment_name)
    assert run.info.status == "FINISHED"
    logged = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoints/checkpoint_latest.pt", "checkpoints/checkpoint_best.pt"} <= logged


def test_failed_checkpoint_write_during_training_is_a_clear_error(
    rel_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import derm_exp.training.epoch_end as epoch_end
    import derm_exp.training.trainer as trainer

    real = epoch_end.save_checkpoint  # the per-epoch checkpoint writes live in epoch_end

    def save(state, path):
        if state["epoch"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(state, path)

    monkeypatch.setattr(epoch_end, "save_checkpoint", save)
    latest = tmp_path / "out" / "checkpoint_latest.pt"
    with pytest.raises(StorageError, match=f"last good checkpoint {latest}"):
        trainer.fit(rel_cfg, tmp_path / "out")
    assert load_checkpoint(latest)["epoch"] == 0


# --- NaN --------------------------------------------------------------------------------------


def test_nan_loss_stops_naming_epoch_and_last_good_checkpoint(
    rel_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import derm_exp.training.trainer as trainer
    from derm_exp.training.hooks import EPOCH_END_HOOKS

    poisoned = []
    real = trainer.build_criterion

    def build(*args, **kwargs):
        criterion = real(*args, **kwargs)

        def loss(logits, targets):
            value = criterion(logits, targets)
            return value * float("nan") if poisoned else value

        return loss

    monkeypatch.setattr(trainer, "build_criterion", build)
    EPOCH_END_HOOKS.append(lambda epoch, metrics: poisoned.append(epoch))
    try:
        with pytest.raises(NonFiniteLossError) as info:
            trainer.fit(rel_cfg, tmp_path / "out")
    finally:
        EPOCH_END_HOOKS.pop()
    message = str(info.value)
    assert "non-finite training loss at epoch 2" in message
    assert f"last good checkpoint {tmp_path / 'out' / 'checkpoint_latest.pt'}" in message
    assert "resume=" in message
    best = load_checkpoint(tmp_path / "out" / "checkpoint_best.pt")
    assert best["epoch"] == 0 and _finite(best["model"])
    (run,) = _runs(rel_cfg.tracking.uri, rel_cfg.tracking.experiment_name)
    assert run.info.status == "FAILED"


def test_nonfinite_weights_are_never_scored_or_saved(
    rel_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step of epoch 2 leaves NaN weights behind a finite loss."""
    import derm_exp.training.trainer as trainer

    real = trainer.train_one_epoch

    def epoch_then_corrupt(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        if kwargs["epoch"] == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(trainer, "train_one_epoch", epoch_then_corrupt)
    with pytest.raises(NonFiniteLossError, match="non-finite weights .* after epoch 2"):
        trainer.fit(rel_cfg, tmp_path / "out")
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt"):
        ck = load_checkpoint(tmp_path / "out" / name)
        assert ck["epoch"] == 0 and _finite(ck["model"]), name


def test_keyboard_interrupt_without_any_checkpoint_says_so(
    rel_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Ctrl-C during the first epoch: run KILLED, and the message says there is nothing to
    resume (instead of pointing at a file that does not exist)."""
    import derm_exp.training.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(rel_cfg, tmp_path / "out")
    (run,) = _runs(rel_cfg.tracking.uri, rel_cfg.tracking.experiment_name)
    assert run.info.status == "KILLED"
    assert "No epoch had completed" in caplog.text
