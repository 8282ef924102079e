"""``make test``'s xdist groups (tests/worker_groups.py): a folder stays on one worker, and the
folders sharing a root-conftest training run are merged so that run trains once."""

from __future__ import annotations

import pytest

from tests.worker_groups import folder_of, groups, worker_count


def test_a_folder_or_a_top_level_file_is_the_unit() -> None:
    assert folder_of("tests/cluster/test_slurm_ddp.py::test_x[a::b]") == "tests/cluster"
    assert folder_of("tests/test_probe_cli.py::test_y") == "tests/test_probe_cli.py"


def test_folders_sharing_a_trained_run_are_one_group() -> None:
    names = groups(
        [
            ("tests/a/test_1.py::t", ["tmp_path"]),
            ("tests/b/test_2.py::t", ["demo_run"]),
            ("tests/c/test_3.py::t", ["options_run", "tmp_path"]),
            ("tests/d/test_4.py::t", ["demo_run", "options_run"]),  # joins b's and c's groups
            ("tests/c/test_5.py::t", []),
            ("tests/e/test_6.py::t", ["demo_data"]),  # cheap to build twice: not shared
            ("tests/test_top.py::t", ["options_run"]),
        ]
    )
    shared = {names[n] for n in names if not n.startswith(("tests/a/", "tests/e/"))}
    assert len(shared) == 1
    assert len({names["tests/a/test_1.py::t"], names["tests/e/test_6.py::t"], *shared}) == 3


def test_auto_uses_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert worker_count() == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)))
    assert worker_count() == 4
