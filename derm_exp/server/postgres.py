"""PostgreSQL for the tracking server, run from the distribution's server binaries.

Hand-written around ``initdb`` / ``pg_ctl`` (no Python package manages a local PostgreSQL that
also works as root): PostgreSQL refuses to run as root, so when started by root every server
command runs as an unprivileged user (``postgres``, created by Debian's package, or
``--pg-user``) through ``runuser``, and the data directory belongs to that user. Password
authentication (SCRAM) everywhere, never ``trust``; it listens on 127.0.0.1 only (TCP, no Unix
socket) unless ``--db-host`` names another address, which then admits the client role from the
server's own subnets (``samenet``), still by password.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

from derm_exp.server.layout import (
    ADMIN_USER,
    CLIENT_USER,
    DATABASES,
    LOOPBACK,
    Credentials,
    ServerDir,
    ServerError,
    Settings,
)

TOOLS = ("initdb", "pg_ctl", "postgres")
ENV_BIN = "DERM_EXP_PG_BIN"
ENV_USER = "DERM_EXP_PG_USER"
_HBA_MARKER = "# derm_exp: the client role from the server's subnets (--db-host)"
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl, postgres) were not found: install them "
    "(Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) or point "
    f"--pg-bin (or ${ENV_BIN}) at their folder"
)


def _has_tools(folder: Path) -> bool:
    return all((folder / t).is_file() and os.access(folder / t, os.X_OK) for t in TOOLS)


def find_bindir(explicit: str | None = None, data: Path | None = None) -> Path:
    """The folder of initdb/pg_ctl/postgres: ``explicit``, ``$DERM_EXP_PG_BIN``, Debian's
    ``/usr/lib/postgresql/<major>/bin`` (the data directory's major version once it exists,
    else the newest installed), or the PATH."""
    explicit = explicit or os.environ.get(ENV_BIN)
    if explicit:
        if not _has_tools(Path(explicit)):
            raise ServerError(f"{explicit} does not hold {', '.join(TOOLS)}. {INSTALL_HINT}")
        return Path(explicit)
    version = None
    if data is not None and (data / "PG_VERSION").is_file():
        version = (data / "PG_VERSION").read_text().strip()
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if _has_tools(Path(p))),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
    )
    if version is not None:
        match = [p for p in found if p.parent.name == version]
        if match:
            return match[0]
    elif found:
        return found[-1]
    on_path = shutil.which("pg_ctl")
    if on_path and _has_tools(Path(on_path).parent):
        return Path(on_path).parent
    if version is not None:
        raise ServerError(
            f"the database in {data} was created by PostgreSQL {version}, whose server "
            f"binaries are not installed (apt-get install postgresql-{version})"
        )
    raise ServerError(INSTALL_HINT)


def server_user(explicit: str | None = None) -> str | None:
    """The OS user PostgreSQL runs as: None (the current user) unless we are root."""
    if os.geteuid() != 0:
        return None
    name = explicit or os.environ.get(ENV_USER) or "postgres"
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ServerError(
            f"PostgreSQL refuses to run as root and there is no user {name!r} to run it as: "
            "`apt-get install postgresql` creates 'postgres', or pass --pg-user <unprivileged "
            "user>, or start the server as a normal user"
        ) from None
    if name == "root":
        raise ServerError("--pg-user root: PostgreSQL refuses to run as root")
    return name


class Postgres:
    """One PostgreSQL cluster in ``<server dir>/postgres``."""

    def __init__(self, where: ServerDir, user: str | None, bindir: Path) -> None:
        self.where = where
        self.data = where.data
        self.user = user
        self.bindir = bindir
        self.log = self.data / "postgres.log"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ServerError(f"{tool} failed: {' / '.join(detail)}{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return ""
        return f"\n  {self.log}:\n    " + "\n    ".join(lines) if lines else ""

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def running(self) -> bool:
        return (
            self.initialized
            and self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0
        )

    def init(self, creds: Credentials) -> None:
        """``initdb`` with the superuser's password and SCRAM authentication."""
        self.data.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.where.path / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(creds.admin_password + "\n")
        try:
            if self.user is not None:
                shutil.chown(self.data, self.user, self.user)
                shutil.chown(pwfile, self.user)
                self._check_reachable()
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                ADMIN_USER,
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _check_reachable(self) -> None:
        """The server user must be able to enter every folder above its data directory."""
        assert self.user is not None
        probe = subprocess.run(["runuser", "-u", self.user, "--", "test", "-w", str(self.data)])
        if probe.returncode != 0:
            raise ServerError(
                f"user {self.user!r} (who runs PostgreSQL, since it refuses root) cannot reach "
                f"{self.data}: a folder above it is closed to other users. Choose a --dir it "
                "can reach, or open the folders above it for traversal (chmod o+x <folder>)"
            )

    def start(self, settings: Settings) -> None:
        check_port_free(settings.client_db_host, settings.db_port, "--db-port")
        listen = ["127.0.0.1"]
        if settings.db_host not in LOOPBACK:
            listen.append(settings.db_host)
            self._admit_subnets()
        options = shlex.join(["-h", ",".join(listen), "-p", str(settings.db_port), "-k", ""])
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def _admit_subnets(self) -> None:
        hba = self.data / "pg_hba.conf"
        text = hba.read_text()
        if _HBA_MARKER not in text:
            with hba.open("a") as f:  # appending keeps the file's owner
                f.write(f"\n{_HBA_MARKER}\nhost all {CLIENT_USER} samenet scram-sha-256\n")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def ensure_databases(self, settings: Settings, creds: Credentials) -> list[str]:
        """The client role (not a superuser) and its ``mlflow`` and ``optuna`` databases; the
        names of those just created."""
        import psycopg
        from psycopg import sql

        try:
            conn = psycopg.connect(
                host="127.0.0.1",
                port=settings.db_port,
                user=ADMIN_USER,
                password=creds.admin_password,
                dbname="postgres",
                autocommit=True,
                connect_timeout=10,
            )
        except psycopg.Error as exc:
            raise ServerError(
                f"cannot log in to PostgreSQL on port {settings.db_port}: {exc}"
            ) from exc
        with conn:
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (CLIENT_USER,))
            if role.fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(CLIENT_USER), sql.Literal(creds.password)
                    )
                )
            created = []
            for name in DATABASES:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if found.fetchone() is None:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(name), sql.Identifier(CLIENT_USER)
                        )
                    )
                    created.append(name)
        return created

    def version(self) -> str:
        out = self._run("postgres", "--version").stdout.strip()
        m = re.search(r"\d+(\.\d+)?", out)
        return m.group(0) if m else out


def check_port_free(host: str, port: int, option: str) -> None:
    """Fail clearly when something already listens on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex((host, port)) == 0:
            raise ServerError(
                f"port {port} on {host} is already in use (another server? "
                f"`python -m derm_exp.server status`): choose another with {option} <port>"
            )


def create_optuna_tables(settings: Settings, creds: Credentials) -> None:
    """Optuna's schema in the new ``optuna`` database: sweepers started together then find it
    (rather than racing to create it) and optuna-dashboard opens it before the first sweep."""
    import warnings

    from optuna.storages import RDBStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        storage = RDBStorage(
            settings.database_url("optuna", host="127.0.0.1"),
            engine_kwargs={"connect_args": {"password": creds.password}},
        )
    storage.engine.dispose()
