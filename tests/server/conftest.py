"""One real tracking server for the session: PostgreSQL + ``mlflow server``, started with the
README's command (``python -m derm_exp.server start``) in a tmp folder on free ports, stopped at
the end with ``stop``; no process of it may be left.

The folder is made under the system tmp dir, not pytest's (mode 0700 under root): PostgreSQL
runs as the unprivileged user ``postgres`` when the tests run as root (CI), and must reach it.
Without PostgreSQL's server binaries the tests skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import N_DEMO_IMAGES, Server, free_port, processes_under, require_postgres


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    require_postgres()
    base = Path(tempfile.mkdtemp(prefix="derm_exp_server_"))
    base.chmod(0o711)  # PostgreSQL's user must reach base/server/postgres
    srv = Server(base, free_port(), free_port())
    started = srv.cli("start", "--port", str(srv.port), "--db-port", str(srv.db_port))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        srv.assert_no_secret(started.stdout, started.stderr)
        yield srv
    finally:
        stopped = srv.cli("stop")
        left = processes_under(base)
        shutil.rmtree(base, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not left, left


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset the CLI runs share (generated once, as `make demo` would)."""
    from derm_exp.data.synthetic import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("server_demo") / "demo", N_DEMO_IMAGES)
