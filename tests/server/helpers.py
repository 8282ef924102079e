"""Helpers of the tracking-server tests: the session's server, CLI runs, demo settings."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import cli
from tests.cli import cli_env

N_DEMO_IMAGES = 400  # data.demo.n_images of every CLI run here (the README's default: 800)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_module(
    module: str, args: list[str], cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in ``cwd`` with ``env`` added to the CLI environment."""
    return cli.run_module(module, *args, cwd=cwd, timeout=timeout, env=cli_env(**env))


@dataclass
class Server:
    """The session's server: its folder, ports and how clients reach it."""

    base: Path  # a tmp folder holding the server folder (and nothing of the clients)
    port: int
    db_port: int

    @property
    def dir(self) -> Path:
        return self.base / "server"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgpass(self) -> Path:
        return self.dir / "pgpass"

    def optuna_url(self) -> str:
        return f"postgresql+psycopg://derm@127.0.0.1:{self.db_port}/optuna"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m derm_exp.server <args> --dir <folder>``."""
        return run_module("derm_exp.server", [*args, "--dir", str(self.dir)], self.base, 400)

    def secrets(self) -> list[str]:
        creds = json.loads((self.dir / "credentials.json").read_text())
        return [creds["password"], creds["admin_password"]]

    def assert_no_secret(self, *texts: str) -> None:
        for secret in self.secrets():
            for text in texts:
                assert secret not in text


def require_postgres() -> None:
    from derm_exp.server.layout import ServerError
    from derm_exp.server.postgres import find_bindir

    try:
        find_bindir()
    except ServerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the tracking-server tests: {exc}")
        pytest.skip(f"needs PostgreSQL's server binaries (CI installs them): {exc}")


def processes_under(base: Path) -> list[str]:
    """Command lines that mention ``base`` (the server's processes name their folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        if str(base) in text:
            found.append(text)
    return found


def demo_args(demo_dir: Path, tracking_uri: str) -> list[str]:
    """What every training run here adds to the README's command: the shared demo data, no
    test bootstrap, no explanation gallery, no loader workers (2 cores), the tracking server."""
    return [
        f"data.demo.dir={demo_dir}",
        f"data.demo.n_images={N_DEMO_IMAGES}",
        "evaluation.n_boot=0",
        "data.num_workers=0",
        "explain.gallery=false",  # the end-of-run gallery: not what these tests are about
        # a 2-epoch demo model may be degenerate; these tests are about the server, not the policy
        "registry.allow_degenerate=true",
        f"tracking.uri={tracking_uri}",
    ]


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"MLflow run id: ([0-9a-f]{32})", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-3000:]
    return found.group(1)
