"""One real SLURM cluster for the session (munged + slurmctld + slurmd on this machine, see
:mod:`tests.cluster.slurm_cluster`), started in a tmp folder on free ports and stopped at the
end; no daemon of it may be left. Without SLURM or munge the tests skip, except in CI (``CI``
set), where they fail. ``.ci/run`` installs Debian's ``slurm-wlm`` and ``munge``.

The folder is made under the system tmp dir, not pytest's (mode 0700 under root): munged runs as
the unprivileged user ``munge`` and must reach its socket folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.slurm_cluster import SlurmCluster, missing_programs


def require_slurm() -> None:
    missing = missing_programs()
    if not missing:
        return
    message = f"needs SLURM and munge (Debian: slurm-wlm munge); missing: {', '.join(missing)}"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the SLURM tests: {message}")
    pytest.skip(message)


def _daemons_under(base: Path) -> list[str]:
    """``pgrep -af`` lines of processes whose command line names ``base``."""
    found = subprocess.run(["pgrep", "-af", str(base)], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    require_slurm()
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd as root (SlurmUser=root, as in CI)")
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="derm_exp_slurm_")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        left = _daemons_under(cluster.base)
        shutil.rmtree(cluster.base, ignore_errors=True)
        assert not left, left


@pytest.fixture(scope="session")
def cluster_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset every cluster sweep reads (generated once, as `make demo` would)."""
    from derm_exp.data.synthetic import ensure_demo_dataset
    from tests.cluster.helpers import N_DEMO_IMAGES

    return ensure_demo_dataset(tmp_path_factory.mktemp("cluster_demo") / "demo", N_DEMO_IMAGES)
