"""``mlflow server`` on the PostgreSQL database, serving the artifacts itself.

Runs in its own process group (its uvicorn worker included) so ``stop`` ends exactly the
processes it started, found by the pid in ``mlflow.pid`` and checked by command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from derm_exp.server.layout import LOOPBACK, ServerDir, ServerError, Settings
from derm_exp.server.postgres import check_port_free

HEALTH_TIMEOUT_S = 240  # MLflow answers /health after 12-30 s on a quiet 2-core machine
STOP_TIMEOUT_S = 30


def command(where: ServerDir, settings: Settings) -> list[str]:
    """The ``mlflow server`` command line (no password: libpq reads it from PGPASSFILE)."""
    # any port on loopback: clients may come through an SSH tunnel (ssh -L 8080:127.0.0.1:5050)
    hosts = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*"]
    if settings.host not in ("0.0.0.0", "::", *LOOPBACK):
        hosts.append(f"{settings.host}:{settings.port}")
    hosts += [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.database_url("mlflow", host="127.0.0.1"),
        "--serve-artifacts",
        "--artifacts-destination",
        str(where.artifacts),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        "1",
        "--allowed-hosts",
        ",".join(hosts),
    ]


def server_env(where: ServerDir) -> dict[str, str]:
    return {
        **os.environ,
        "PGPASSFILE": str(where.pgpass),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # MLflow 3.17 otherwise starts a job runner and seven huey consumers (GenAI jobs)
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def running_pid(where: ServerDir) -> int | None:
    """The pid of the MLflow server this folder started, if it still runs."""
    try:
        pid = int(where.mlflow_pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    args = [a.decode(errors="replace") for a in cmdline]
    if "mlflow" in args and "server" in args and str(where.artifacts) in args:
        return pid
    return None  # a stale pid file: that process is gone (the pid may be reused)


def healthy(settings: Settings, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{settings.tracking_uri}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start(where: ServerDir, settings: Settings) -> int:
    """Start the server and wait until it answers ``/health``; its pid."""
    check_port_free(settings.client_host, settings.port, "--port")
    with where.mlflow_log.open("ab") as log:
        proc = subprocess.Popen(
            command(where, settings),
            cwd=where.path,
            env=server_env(where),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    where.mlflow_pid.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            where.mlflow_pid.unlink(missing_ok=True)
            raise ServerError(
                f"mlflow server exited with status {proc.returncode}{log_tail(where)}"
            )
        if healthy(settings):
            return proc.pid
        time.sleep(1)
    stop(where)
    raise ServerError(
        f"mlflow server did not answer on {settings.tracking_uri} within {HEALTH_TIMEOUT_S} s"
        f"{log_tail(where)}"
    )


def stop(where: ServerDir) -> bool:
    """SIGTERM the server's process group, SIGKILL after 30 s; False if it was not running."""
    pid = running_pid(where)
    if pid is None:
        where.mlflow_pid.unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.3)
    if _group_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)
    where.mlflow_pid.unlink(missing_ok=True)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is left (zombies of our own child reaped)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def log_tail(where: ServerDir, lines: int = 8) -> str:
    try:
        text = where.mlflow_log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n  {where.mlflow_log}:\n    " + "\n    ".join(text) if text else ""
