"""Start, stop and report the tracking server: PostgreSQL first up and last down."""

from __future__ import annotations

import dataclasses

from derm_exp.server import mlflow_server
from derm_exp.server.layout import LOOPBACK, ServerDir, ServerError, Settings
from derm_exp.server.postgres import Postgres, create_optuna_tables, find_bindir, server_user


def open_postgres(where: ServerDir, pg_bin: str | None, pg_user: str | None) -> Postgres:
    return Postgres(where, server_user(pg_user), find_bindir(pg_bin, where.data))


def resolve_settings(where: ServerDir, **given: object) -> Settings:
    """The saved settings with the options given on the command line (None = keep)."""
    settings = where.load_settings()
    changes = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(settings, **changes)


def start(
    where: ServerDir, settings: Settings, pg_bin: str | None = None, pg_user: str | None = None
) -> list[str]:
    """Start whatever is not running yet; the lines to print."""
    pg = open_postgres(where, pg_bin, pg_user)
    lines: list[str] = []
    pid = mlflow_server.running_pid(where)
    pg_up = pg.running()
    if pg_up or pid is not None:
        running = where.load_settings()
        if running != settings:
            raise ServerError(
                f"the server in {where.path} is already (partly) running with other settings "
                f"(MLflow {running.tracking_uri}, database port {running.db_port}): stop it "
                "first (`python -m derm_exp.server stop`) to change them"
            )
        if pg_up and pid is not None:
            return [
                f"already running (MLflow pid {pid}): nothing to do",
                *client_lines(where, running),
            ]
    where.create(shared_with_other_user=pg.user is not None)
    creds = where.credentials()
    where.write_pgpass(creds)
    if not pg.initialized:
        lines.append(f"creating the PostgreSQL {pg.version()} database in {where.data}")
        pg.init(creds)
    if not pg_up:
        pg.start(settings)
        lines.append(f"PostgreSQL on {settings.client_db_host}:{settings.db_port}")
    if "optuna" in pg.ensure_databases(settings, creds):
        create_optuna_tables(settings, creds)
    where.save_settings(settings)
    if pid is None:
        pid = mlflow_server.start(where, settings)
    lines.append(
        f"MLflow server on {settings.tracking_uri} (pid {pid}), artifacts in {where.artifacts}"
    )
    lines += warnings(settings)
    return [*lines, *client_lines(where, settings)]


def stop(where: ServerDir, pg_bin: str | None = None, pg_user: str | None = None) -> list[str]:
    """Stop MLflow, then PostgreSQL (so no write is cut off); the lines to print."""
    lines = []
    if mlflow_server.stop(where):
        lines.append("MLflow server stopped")
    if where.data.is_dir() and (where.data / "PG_VERSION").is_file():
        pg = open_postgres(where, pg_bin, pg_user)
        if pg.running():
            pg.stop()
            lines.append("PostgreSQL stopped")
    return lines or [f"not running (server folder {where.path})"]


def status(
    where: ServerDir, pg_bin: str | None = None, pg_user: str | None = None
) -> tuple[bool, list[str]]:
    """(both running, the lines to print)."""
    settings = where.load_settings()
    pg_up = False
    if (where.data / "PG_VERSION").is_file():
        pg_up = open_postgres(where, pg_bin, pg_user).running()
    pid = mlflow_server.running_pid(where)
    ok = pid is not None and mlflow_server.healthy(settings)
    lines = [
        f"server folder {where.path}",
        f"  PostgreSQL: {'running' if pg_up else 'stopped'} "
        f"({settings.client_db_host}:{settings.db_port})",
        f"  MLflow:     {'running' if ok else 'stopped'} ({settings.tracking_uri}"
        f"{f', pid {pid}' if pid else ''})",
    ]
    if pg_up and ok:
        lines += client_lines(where, settings)
    elif pg_up or pid is not None:
        lines.append("  partly running: `python -m derm_exp.server start` starts the rest")
    return pg_up and ok, lines


def client_lines(where: ServerDir, settings: Settings) -> list[str]:
    """How clients use the server (no password: it stays in the pgpass file)."""
    return [
        "Use it:",
        f"  python -m derm_exp.train ... tracking.uri={settings.tracking_uri}",
        f"  export PGPASSFILE={where.pgpass}   # Optuna's database password (mode 0600)",
        f"  python -m derm_exp.train -m hparams_search=optuna tracking.uri={settings.tracking_uri}"
        f" hydra.sweeper.storage={settings.database_url('optuna')}",
        f"  UI: {settings.tracking_uri}    stop: make server-stop",
    ]


def warnings(settings: Settings) -> list[str]:
    out = []
    if settings.host not in LOOPBACK:
        out.append(
            f"WARNING: MLflow listens on {settings.host}, beyond this machine, without "
            "authentication: anyone who reaches the port can read and change every run. Keep it "
            "behind a firewall / VPN, or use an SSH tunnel to a loopback server instead"
        )
    if settings.db_host not in LOOPBACK:
        out.append(
            f"NOTE: PostgreSQL listens on {settings.db_host}; the client role may log in from "
            "this machine's subnets with its password (unencrypted connection)"
        )
    return out
