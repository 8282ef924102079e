"""Running the project's CLIs as a user does: ``python -m <module> <args>`` in a subprocess.

One place for the environment every CLI test uses (offline hub, no telemetry, short Hydra
errors) and for the subprocess call, so the suites under tests/ do not each keep a copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from derm_exp.config import PROJECT_ROOT


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment, offline and without telemetry, with this checkout first on
    ``PYTHONPATH`` (so a worktree's subprocesses import its own code), plus ``extra``."""
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "HYDRA_FULL_ERROR": "0",
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_module(
    module: str,
    *args: str,
    cwd: Path | str = PROJECT_ROOT,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` to completion, output captured as text (never raises on a
    non-zero exit: tests assert on ``returncode``)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,
    )
