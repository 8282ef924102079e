"""``python -m derm_exp.server start|stop|status`` (``make server``): idempotent start, status,
clear errors, and where the credentials live (never in a command line, URL or output)."""

from __future__ import annotations

import os
import stat
import urllib.request
from pathlib import Path

import pytest

from derm_exp.server import mlflow_server
from derm_exp.server.layout import ServerDir, ServerError, Settings
from derm_exp.server.postgres import find_bindir, server_user
from tests.server.helpers import Server, free_port, processes_under, run_module


def test_help_explains_the_commands(tmp_path: Path) -> None:
    result = run_module("derm_exp.server", ["--help"], tmp_path)
    assert result.returncode == 0
    assert "start|stop|status" in result.stdout
    assert "127.0.0.1" in result.stdout and "PGPASSFILE" in result.stdout
    start = run_module("derm_exp.server", ["start", "--help"], tmp_path)
    assert "--db-port" in start.stdout and "--host" in start.stdout


def test_makefile_runs_the_server_module() -> None:
    from derm_exp.config import PROJECT_ROOT

    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "\t$(BIN)/python -m derm_exp.server start $(ARGS)" in makefile
    assert "\t$(BIN)/python -m derm_exp.server stop $(ARGS)" in makefile


def test_missing_postgres_binaries_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from derm_exp.server import postgres

    monkeypatch.delenv(postgres.ENV_BIN, raising=False)
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(ServerError, match="apt-get install postgresql"):
        find_bindir()
    result = run_module(
        "derm_exp.server",
        ["start", "--dir", str(tmp_path / "s"), "--pg-bin", str(tmp_path)],
        tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "apt-get install postgresql" in result.stderr
    assert "Traceback" not in result.stderr


def test_root_runs_postgres_as_an_unprivileged_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert server_user() is None  # a normal user runs it itself
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ServerError, match="refuses to run as root"):
        server_user("no_such_user_here")
    with pytest.raises(ServerError, match="refuses to run as root"):
        server_user("root")


def test_command_lines_and_urls_hold_no_password(tmp_path: Path) -> None:
    settings = Settings(port=1234, db_port=2345)
    cmd = mlflow_server.command(ServerDir(tmp_path), settings)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    assert uri == "postgresql+psycopg://derm@127.0.0.1:2345/mlflow"
    assert settings.database_url("optuna") == "postgresql+psycopg://derm@127.0.0.1:2345/optuna"
    assert "--serve-artifacts" in cmd and "--workers" in cmd
    assert mlflow_server.server_env(ServerDir(tmp_path))["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == (
        "false"
    )


@pytest.mark.slow
def test_start_again_says_it_is_running_and_status_says_how_to_use_it(server: Server) -> None:
    again = server.cli("start")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    status = server.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "PostgreSQL: running" in status.stdout and "MLflow:     running" in status.stdout
    assert f"tracking.uri={server.uri}" in status.stdout
    assert f"export PGPASSFILE={server.pgpass}" in status.stdout
    assert f"hydra.sweeper.storage={server.optuna_url()}" in status.stdout
    server.assert_no_secret(again.stdout, again.stderr, status.stdout, status.stderr)
    # `mlflow ui` is the server itself: its web UI answers on the tracking URI
    with urllib.request.urlopen(server.uri, timeout=30) as page:
        assert page.status == 200 and b"<html" in page.read(4096).lower()


@pytest.mark.slow
def test_other_settings_while_running_are_refused(server: Server) -> None:
    result = server.cli("start", "--port", str(free_port()))
    assert result.returncode == 1
    assert "error: " in result.stderr and "stop it" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_credentials_stay_in_private_files(server: Server) -> None:
    password, admin_password = server.secrets()
    for name in ("credentials.json", "pgpass"):
        mode = (server.dir / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600, (name, oct(mode))
    assert server.pgpass.read_text() == f"*:*:*:derm:{password}\n"  # the client role only
    assert admin_password not in server.pgpass.read_text()
    commands = processes_under(server.base)
    assert any("mlflow server" in c for c in commands), commands
    assert any("postgres -D" in c for c in commands), commands
    server.assert_no_secret(*commands)
    hba = (server.dir / "postgres" / "pg_hba.conf").read_text().splitlines()
    rules = [line.split() for line in hba if line.strip() and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), rules


@pytest.mark.slow
def test_the_database_wants_the_password_and_listens_on_loopback(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(server.dir / "no-such-file"))
    where = {"host": "127.0.0.1", "port": server.db_port, "user": "derm", "dbname": "optuna"}
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(**where, connect_timeout=10)
    monkeypatch.setenv("PGPASSFILE", str(server.pgpass))
    with psycopg.connect(**where, connect_timeout=10) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        super_user = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        assert conn.execute(super_user).fetchone() == (False,)  # clients are no superuser
