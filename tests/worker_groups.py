"""How ``make test`` shares the suite between pytest-xdist workers (``-n auto --dist loadgroup``).

Most of the suite's time is spent in CLI subprocesses (imports, tiny training runs, SLURM and
server waits), much of it on one core, so two workers on a 2-core machine finish sooner than
one (47 min 31 s -> 37 min 34 s on a 2-core AVX2 machine, 2026-12-07). A worker builds every
session fixture it uses, so the tests are grouped so that each costly fixture is built once:

- a test folder (``tests/<folder>/``, or a top-level test file) is one group: its conftest's
  session fixtures (the SLURM cluster, the PostgreSQL server, a folder's trained model) are
  built on one worker only;
- folders that use one of the root conftest's trained runs (:data:`SHARED_RUNS`) are merged
  into one group, so that run trains once.

xdist has no grouping by fixture, so :func:`assign_groups` marks every test with
``xdist_group`` before xdist reads the marks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

# The root conftest's session fixtures that train a model through the CLI (~1 min each here).
SHARED_RUNS = ("demo_run", "options_run")
MAX_WORKERS = 4  # past this, duplicated fixtures and memory cost more than workers gain


def folder_of(nodeid: str) -> str:
    """``tests/<folder>`` for a test in a folder, else its file."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else path


def groups(tests: Iterable[tuple[str, Iterable[str]]]) -> dict[str, str]:
    """Group name per node id, from ``(node id, fixture names)`` pairs: folders joined through
    the :data:`SHARED_RUNS` they use (union-find over folders and fixtures)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    tests = [(nodeid, set(fixtures)) for nodeid, fixtures in tests]
    for nodeid, fixtures in tests:
        folder = root(folder_of(nodeid))
        for run in SHARED_RUNS:
            if run in fixtures:
                parent[folder] = root(f"fixture:{run}")
                folder = root(folder)
    return {nodeid: root(folder_of(nodeid)) for nodeid, _ in tests}


def worker_count() -> int:
    """``-n auto``: one worker per CPU this process may use, at most :data:`MAX_WORKERS`."""
    # sched_getaffinity is Linux-only (it honours taskset/cgroup CPU limits); elsewhere cpu_count
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(usable or 1, MAX_WORKERS))


def assign_groups(items: list[pytest.Item]) -> None:
    """Mark each item with its ``xdist_group``."""
    names = groups((item.nodeid, item.fixturenames) for item in items)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(names[item.nodeid]))
