"""The service benchmark's load generator (derm_exp.perf.service_load)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from derm_exp.perf.service_load import LoadError, parse_args
from tests.inference.conftest import TrainedModel, run_cli


def test_arguments_are_checked() -> None:
    opts = parse_args(["model=m.pt", "clients=1,8", "modes=off"])
    assert opts["rounds"] == 3
    assert opts["clients"] == [1, 8] and opts["modes"] == ["off"] and opts["requests"] == 160
    bad_lines = (["clients=1"], ["model=m.pt", "clients=x"], ["model=m.pt", "speed=3"])
    for bad in (*bad_lines, ["model=m.pt", "rounds=0"]):
        with pytest.raises(LoadError):
            parse_args(bad)


@pytest.mark.slow
def test_load_generator_measures_both_batching_modes(
    served_model: TrainedModel, tmp_path: Path
) -> None:
    out = tmp_path / "service.json"
    proc = run_cli(
        "derm_exp.perf.service_load",
        f"model={served_model.checkpoint}",
        "clients=1,4",
        "requests=16",
        "warmup=2",
        "rounds=2",
        "device=cpu",
        f"output={out}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for mode in ("on", "off"):
        runs = result["batching"][mode]
        assert [r["clients"] for r in runs] == [1, 4]
        assert all(r["errors"] == 0 and r["requests"] == 32 and r["rounds"] == 2 for r in runs)
        assert all(r["p95_ms"] >= r["p50_ms"] > 0 for r in runs)
    # one request per forward without batching: as many batches as requests
    assert all(r["mean_batch"] == 1.0 for r in result["batching"]["off"])
    assert set(result["speedup"]) == {"1", "4"}
    assert "micro-batching speed-up at 4 clients" in proc.stdout
