"""What the tracking server keeps in its folder: settings, credentials, data, logs.

``<dir>/`` (``--dir``, else ``$DERM_EXP_SERVER_DIR``, else ``<project>/server``; git-ignored):

* ``server.json`` -- host and ports of the last start (no secret); ``start`` reuses them;
* ``credentials.json`` -- mode 0600: the database superuser (used by ``start`` only) and the
  client role MLflow and Optuna log in as, with passwords generated on the first start;
* ``pgpass`` -- mode 0600: the client role's password in libpq's password-file format. MLflow's
  server gets it through ``PGPASSFILE``, and so do Optuna clients, so no URL, command line,
  logged param or Hydra override ever holds a password;
* ``postgres/`` -- the PostgreSQL data directory (``postgres.log`` inside), ``artifacts/`` --
  the artifacts MLflow serves, ``mlflow.log`` and ``mlflow.pid``.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from derm_exp.errors import UserError

ENV_DIR = "DERM_EXP_SERVER_DIR"
ADMIN_USER = "derm_admin"
CLIENT_USER = "derm"
DATABASES = ("mlflow", "optuna")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerError(UserError, RuntimeError):
    """The tracking server cannot be started, stopped or reached as asked."""


@dataclass
class Settings:
    """Where the server listens. ``host`` / ``db_host`` beyond loopback only when asked."""

    host: str = "127.0.0.1"
    port: int = 5050
    db_host: str = "127.0.0.1"
    db_port: int = 5433
    # extra Host headers MLflow accepts (comma-separated), e.g. the name clients use for it
    allowed_hosts: str = ""

    @property
    def client_host(self) -> str:
        """The address clients on this machine use for MLflow."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", *LOOPBACK) else self.host

    @property
    def client_db_host(self) -> str:
        return "127.0.0.1" if self.db_host in ("0.0.0.0", "::", *LOOPBACK) else self.db_host

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.client_host}:{self.port}"

    def database_url(self, database: str, host: str | None = None) -> str:
        """SQLAlchemy URL of ``database`` for the client role, without a password (libpq reads
        it from ``PGPASSFILE``)."""
        return (
            f"postgresql+psycopg://{CLIENT_USER}@{host or self.client_db_host}:"
            f"{self.db_port}/{database}"
        )


@dataclass(frozen=True)
class Credentials:
    admin_password: str
    password: str

    def __repr__(self) -> str:  # never show a password in a traceback or a log line
        return "Credentials(admin_password='***', password='***')"


class ServerDir:
    """The server folder and the files in it."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        if path is None:
            from derm_exp.config import PROJECT_ROOT

            path = os.environ.get(ENV_DIR) or PROJECT_ROOT / "server"
        self.path = Path(path).expanduser().resolve()
        self.settings_file = self.path / "server.json"
        self.credentials_file = self.path / "credentials.json"
        self.pgpass = self.path / "pgpass"
        self.data = self.path / "postgres"
        self.artifacts = self.path / "artifacts"
        self.mlflow_log = self.path / "mlflow.log"
        self.mlflow_pid = self.path / "mlflow.pid"

    def create(self, shared_with_other_user: bool) -> None:
        """Create the folder: 0700, or 0711 when PostgreSQL runs as another user (it must reach
        its data directory inside; it can list or read nothing else)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o711 if shared_with_other_user else 0o700)
        self.artifacts.mkdir(exist_ok=True)

    def load_settings(self) -> Settings:
        """The settings of the last start (defaults before the first)."""
        if not self.settings_file.is_file():
            return Settings()
        try:
            saved = json.loads(self.settings_file.read_text())
        except (OSError, ValueError) as exc:
            raise ServerError(f"cannot read {self.settings_file}: {exc}") from exc
        known = {f.name for f in fields(Settings)}
        return Settings(**{k: v for k, v in saved.items() if k in known})

    def save_settings(self, settings: Settings) -> None:
        self.settings_file.write_text(json.dumps(asdict(settings), indent=2) + "\n")

    def credentials(self) -> Credentials:
        """The stored credentials; generated (and stored, mode 0600) on the first call."""
        if not self.credentials_file.is_file():
            creds = Credentials(secrets.token_urlsafe(24), secrets.token_urlsafe(24))
            _write_private(self.credentials_file, json.dumps(creds.__dict__) + "\n")
            return creds
        check_private(self.credentials_file)
        try:
            return Credentials(**json.loads(self.credentials_file.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ServerError(f"cannot read {self.credentials_file}: {exc}") from exc

    def write_pgpass(self, creds: Credentials) -> None:
        """The client role's line of libpq's password file (any host, port and database)."""
        _write_private(self.pgpass, f"*:*:*:{CLIENT_USER}:{creds.password}\n", replace=True)


def check_private(path: Path) -> None:
    """Refuse a credentials file that others can read (libpq ignores such a pgpass too)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ServerError(
            f"{path} is readable by other users (mode {stat.filemode(mode)}): run "
            f"`chmod 600 {path}`"
        )


def _write_private(path: Path, text: str, replace: bool = False) -> None:
    """Write ``text`` to a new file created with mode 0600 (never briefly world-readable)."""
    if replace:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
