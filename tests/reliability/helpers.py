"""Helpers for the reliability tests: tiny overrides and a training-CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli import run_module
from tests.tiny import tiny

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny("registry.enabled=false", "tta=none", "evaluation.n_boot=0")


def cli_env() -> dict[str, str]:
    """Environment for ``python -m derm_exp.train`` subprocesses: offline, no telemetry, one
    thread (identical float reductions in every process, and 2 runs fit on 2 cores)."""
    env = dict(os.environ)
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HYDRA_FULL_ERROR="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def restore_sigint() -> None:
    """Child processes get Python's Ctrl-C handler even when the test runner ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_args(tmp_path: Path, data_root: Path, out: str = "out") -> list[str]:
    """Overrides for a tiny CPU run logging to a tmp MLflow store."""
    return [
        *TINY,
        f"data.root={data_root}",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"tracking.artifact_root={tmp_path}/mlruns",
        f"hydra.run.dir={tmp_path}/{out}",
        f"++data.cache_dir={tmp_path}/cache",  # decoded-image cache: never the project's
    ]


def train_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "derm_exp.train", *args]


def run_train(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the training CLI to completion and capture its output."""
    return run_module(
        "derm_exp.train", *args, cwd=ROOT, timeout=timeout, env=cli_env(), preexec_fn=restore_sigint
    )


def start_train(args: list[str], log: Path) -> subprocess.Popen:
    """Start the training CLI in the background, output to ``log``."""
    handle = log.open("w")
    return subprocess.Popen(
        train_cmd(args),
        cwd=ROOT,
        env=cli_env(),
        stdout=handle,
        stderr=subprocess.STDOUT,
        preexec_fn=restore_sigint,
    )


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen, log: Path, limit: float = 300
) -> None:
    """Poll ``condition`` every 20 ms until true; fail with the log if the process ends first."""
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc={proc.returncode}) before the condition:\n" + tail(log))
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("condition not reached in time:\n" + tail(log))
        time.sleep(0.02)


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
