"""A 2-process gloo torchrun of ``experiment=demo`` that loses a rank mid-epoch, or gets Ctrl-C:
every process ends, the last checkpoint is intact, the MLflow run says how it ended, and the
run resumes to the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from derm_exp.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
TIMEOUT_S = 60  # trainer.ddp_timeout_s of these runs


def _cmd(tmp_path: Path, out: str, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += ["-m", "derm_exp.train", "experiment=demo", "trainer.max_epochs=4"]
    return cmd + [
        "evaluation.n_boot=0",
        "data.num_workers=0",
        "data.batch_size=4",  # many steps per epoch: the kill lands inside one
        f"data.demo.dir={tmp_path / 'demo'}",
        "data.demo.n_images=160",
        "registry.enabled=false",
        "explain.gallery=false",  # not what this test is about
        f"trainer.ddp_timeout_s={TIMEOUT_S}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_root={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / out}",
        *args,
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _start(tmp_path: Path, log: Path) -> subprocess.Popen:
    """torchrun in its own process group (what a terminal's Ctrl-C signals), with Python's
    Ctrl-C handling even when the test runner ignores SIGINT."""
    return subprocess.Popen(
        _cmd(tmp_path, "out"),
        cwd=tmp_path,
        env=_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_first_epoch(proc: subprocess.Popen, tmp_path: Path, log: Path) -> dict:
    latest = tmp_path / "out" / "checkpoint_latest.pt"
    deadline = time.monotonic() + 600
    while not latest.is_file():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.05)
    return load_checkpoint(latest)


def _children(pid: int) -> list[int]:
    """Child pids of ``pid`` from /proc (psutil is not a dependency)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_pid(torchrun_pid: int, rank: int) -> int:
    for pid in _children(torchrun_pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no rank {rank} under torchrun {torchrun_pid}")


def _leftovers(tmp_path: Path) -> list[str]:
    """Processes still running with this test's folder on their command line."""
    left = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if entry.name.isdigit() and str(tmp_path) in cmdline:
            left.append(cmdline)
    return left


def _run(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run


def _assert_no_rank_traceback(output: str) -> None:
    """torchrun's own failure summary may carry its traceback; our ranks print none."""
    frames = [line for line in output.splitlines() if line.strip().startswith('File "')]
    assert not [f for f in frames if "derm_exp" in f], output[-4000:]


def _intact(ck: dict) -> bool:
    return all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())


def test_a_rank_killed_mid_epoch_stops_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    log = tmp_path / "torchrun.log"
    proc = _start(tmp_path, log)
    try:
        saved = _wait_for_first_epoch(proc, tmp_path, log)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)  # epoch 2 is under way
        rc = proc.wait(2 * TIMEOUT_S)  # the survivor exits well within its timeout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert rc != 0, output[-4000:]
    assert not _leftovers(tmp_path)
    ours = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, output[-4000:]
    assert "another DDP process failed" in ours[0] and "marked FAILED" in ours[0]
    _assert_no_rank_traceback(output)

    client, run = _run(tmp_path)
    assert run.info.status == "FAILED"
    assert f"resume={run.info.run_id}" in ours[0]
    latest = load_checkpoint(tmp_path / "out" / "checkpoint_latest.pt")  # loads: intact
    assert latest["epoch"] >= saved["epoch"] and _intact(latest)
    assert latest["epoch"] < 3, "the run ended before the kill"

    resumed = subprocess.run(
        _cmd(tmp_path, "out2", f"resume={run.info.run_id}"),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    client, run = _run(tmp_path)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert steps == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "out2" / "checkpoint_latest.pt")["epoch"] == 3


def test_ctrl_c_stops_both_ranks_and_marks_the_run_killed(tmp_path: Path) -> None:
    log = tmp_path / "torchrun.log"
    proc = _start(tmp_path, log)
    try:
        _wait_for_first_epoch(proc, tmp_path, log)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        rc = proc.wait(2 * TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert rc != 0, output[-4000:]
    assert not _leftovers(tmp_path)
    _assert_no_rank_traceback(output)
    assert "interrupted (run" in output and "marked KILLED" in output
    client, run = _run(tmp_path)
    assert run.info.status == "KILLED"
    latest = load_checkpoint(tmp_path / "out" / "checkpoint_latest.pt")
    assert latest["run_id"] == run.info.run_id and latest["epoch"] < 3 and _intact(latest)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/checkpoint_latest.pt" in logged
