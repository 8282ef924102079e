"""``python -m derm_exp.evaluate`` reports selective prediction: the curve, AURC, selective
balanced accuracy at the configured coverages, and what the stored threshold reaches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inference.conftest import TrainedModel, run_cli, session_model


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The tiny model of tests/inference/conftest.py (trained once per session)."""
    return session_model(tmp_path_factory, demo_data)


@pytest.mark.slow
def test_evaluate_reports_selective_prediction(trained_model: TrainedModel, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = run_cli(
        "derm_exp.evaluate",
        f"model={trained_model.checkpoint}",
        "tracking.enabled=false",
        "bootstrap.n_boot=0",
        "data.num_workers=0",
        "selective_coverages=[0.95,0.5]",
        f"hydra.run.dir={out}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "evaluation_metrics.json").read_text())
    sel = report["selective"]
    assert sel["probabilities"] == "calibrated"
    assert set(sel["at_coverage"]) == {"cov95", "cov50"}
    assert 0 <= sel["aurc"] <= 1 and sel["eaurc"] >= -1e-9
    assert sel["curve"]["coverage"][-1] == 1.0
    stored = report["abstention"]
    assert stored["target"] == {"coverage": 0.9}
    assert 0 <= stored["on_data"]["coverage"] <= 1
    assert (out / "plots" / "risk_coverage.png").is_file()
    assert "AURC" in proc.stdout and "abstention threshold" in proc.stdout


def test_bad_coverages_are_a_clear_error_before_any_work(tmp_path: Path) -> None:
    proc = run_cli(
        "derm_exp.evaluate",
        f"model={tmp_path / 'missing.pt'}",
        "selective_coverages=[0.9,1.5]",
        "tracking.enabled=false",
        f"hydra.run.dir={tmp_path / 'eval'}",
        timeout=120,
    )
    assert proc.returncode != 0
    assert "error: selective_coverages=[0.9, 1.5]" in proc.stderr
    assert "Traceback" not in proc.stderr
