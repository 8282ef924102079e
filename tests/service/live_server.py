"""A real ``python -m derm_exp.serve`` subprocess on a free loopback port, stopped afterwards."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from derm_exp.config import PROJECT_ROOT
from tests.inference.conftest import CLI_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(*args: str, log: Path, startup_s: float = 120.0) -> Iterator[str]:
    """Run ``python -m derm_exp.serve <args> port=<free>``; yield its base URL once /health
    answers; SIGTERM (then kill) at the end. Output goes to ``log``."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "derm_exp.serve", *args, f"port={port}"],
            cwd=PROJECT_ROOT,
            env=CLI_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, startup_s, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, startup_s: float, log: Path) -> None:
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"derm_exp.serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(
        f"derm_exp.serve did not answer /health in {startup_s} s:\n{log.read_text()}"
    )
