"""``make ui`` serves MLflow without the job runner and huey consumers MLflow 3.17 starts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from derm_exp.config import PROJECT_ROOT


def ui_command(port: int) -> str:
    """The ``make ui`` recipe as make would run it, with this interpreter's bin folder."""
    out = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "ui",
            f"BIN={Path(sys.executable).parent}",
            f"UI_PORT={port}",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


def session_processes(sid: int) -> list[str]:
    """Command lines of every process in session ``sid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == sid:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError("no /health answer")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_ui_starts_no_job_runner(tmp_path: Path) -> None:
    port = free_port()
    command = ui_command(port)
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in command
    store = f"sqlite:///{PROJECT_ROOT}/mlflow.db"
    assert store in command
    command = command.replace(store, f"sqlite:///{tmp_path}/mlflow.db")  # not the project's store
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        command,
        shell=True,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(port, proc)
        time.sleep(5)  # MLflow starts its job runner after the web server answers
        processes = session_processes(proc.pid)
        assert not [p for p in processes if "huey" in p or "_job_runner" in p], processes
        assert any("uvicorn" in p for p in processes), processes
        assert len(processes) <= 3, processes  # the shell, mlflow ui and its uvicorn worker
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
