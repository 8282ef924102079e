"""``python -m derm_exp.benchmark benchmark.sections=[ddp]``: the trainer's loop in 1 and in 2
gloo processes, measured in one run, reported as img/s and their ratio."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli import run_module
from tests.tiny import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _benchmark(*args: str) -> subprocess.CompletedProcess:
    return run_module("derm_exp.benchmark", *args, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_ddp_section_measures_one_and_two_processes(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _benchmark(
        *TINY_MODEL,
        f"data.root={demo_data}",
        "device=cpu",
        "benchmark.sections=[ddp]",
        "benchmark.batches=2",
        "benchmark.warmup=1",
        "benchmark.threads=1",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((out / "benchmark.json").read_text())["ddp"]
    assert ddp["processes"] == 2 and ddp["backend"] == "gloo"
    assert ddp["threads_per_process"] == {"1": 1, "2": 1}
    assert ddp["single_img_s"] > 0 and ddp["multi_img_s"] > 0
    assert ddp["multi_over_single"] == pytest.approx(ddp["multi_img_s"] / ddp["single_img_s"])
    assert "DDP: training loop, 1 process" in proc.stdout
    assert "N processes / 1 process" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_ddp_section_needs_two_processes(tmp_path: Path) -> None:
    proc = _benchmark(
        "benchmark.sections=[ddp]", "benchmark.ddp_processes=1", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 1
    assert "benchmark.ddp_processes=1 must be >= 2" in proc.stderr
    assert "Traceback" not in proc.stderr
