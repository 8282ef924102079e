"""Training-curve diagnosis: one constructed history per verdict, and the demo run's tag."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from derm_exp.training import diagnosis
from derm_exp.training.diagnosis import VERDICTS, diagnose
from tests.demo_run import DemoRun


def _history(bal_acc: list[float], val_loss: list[float], train_loss: list[float]) -> dict:
    assert len(bal_acc) == len(val_loss) == len(train_loss)
    n = len(bal_acc)
    return {
        "train/loss": train_loss,
        "train/accuracy": [0.5] * n,
        "lr": [1e-3] * n,
        "val/loss": val_loss,
        "val/balanced_accuracy": bal_acc,
        "epoch": [float(e + 1) for e in range(n)],
    }


IMPROVING = _history(
    [0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    [1.8, 1.5, 1.3, 1.1, 0.95, 0.85],
    [1.9, 1.5, 1.2, 1.0, 0.9, 0.8],
)
LEVELLED = _history(
    [0.2, 0.45, 0.6, 0.65, 0.66, 0.665, 0.664, 0.665],
    [1.8, 1.2, 0.9, 0.8, 0.78, 0.77, 0.77, 0.775],
    [1.9, 1.2, 0.9, 0.8, 0.76, 0.75, 0.745, 0.74],
)


def test_steadily_rising_metric_is_still_improving() -> None:
    result = diagnose(IMPROVING)
    assert result.verdict == "still_improving"
    x = result.numbers
    assert x["monitor_slope"] == pytest.approx(0.1)
    assert x["monitor_variation"] == pytest.approx(0.0, abs=1e-12)  # the same step every epoch
    assert x["window"] == diagnosis.WINDOW
    assert x["loss_gap"] == pytest.approx(0.05)
    assert x["loss_gap_ratio"] == pytest.approx(0.05 / 0.85)
    assert x["val_loss_min_epoch"] == 6 and x["val_loss_rise"] == 0
    assert "trainer.max_epochs" in result.reason


def test_levelled_off_curves_are_a_good_fit() -> None:
    result = diagnose(LEVELLED)
    assert result.verdict == "good_fit", result.reason
    assert 0 < result.numbers["monitor_slope"] < diagnosis.SLOPE_MIN
    assert result.numbers["monitor_best_epoch"] == 6


def test_rising_val_loss_while_train_loss_falls_is_over_fitting() -> None:
    history = _history(
        [0.2, 0.5, 0.6, 0.62, 0.62, 0.61, 0.61, 0.6],
        [1.6, 1.0, 0.8, 0.75, 0.8, 0.9, 1.0, 1.1],
        [1.8, 1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12],
    )
    result = diagnose(history)
    assert result.verdict == "over_fitting"
    assert result.numbers["val_loss_min_epoch"] == 4
    assert result.numbers["val_loss_rise"] == pytest.approx(0.35 / 0.75)
    assert "epoch 4" in result.reason


def test_large_gap_with_a_stalled_val_loss_is_over_fitting() -> None:
    history = _history(
        [0.2, 0.5, 0.6, 0.62, 0.62, 0.62, 0.62, 0.62, 0.62],
        [1.6, 1.0, 0.82, 0.8, 0.8, 0.8, 0.81, 0.8, 0.81],
        [1.5, 0.8, 0.5, 0.35, 0.3, 0.27, 0.24, 0.22, 0.2],
    )
    result = diagnose(history)
    assert result.verdict == "over_fitting"
    assert result.numbers["loss_gap_ratio"] >= diagnosis.GAP_MAX
    assert result.numbers["val_loss_rise"] < diagnosis.VAL_RISE_MAX


def test_a_zig_zagging_metric_is_unstable() -> None:
    history = _history(
        [0.2, 0.4, 0.3, 0.45, 0.33, 0.5, 0.38],
        [1.8, 1.5, 1.4, 1.3, 1.25, 1.2, 1.15],
        [1.9, 1.6, 1.4, 1.3, 1.2, 1.1, 1.0],
    )
    result = diagnose(history)
    assert result.verdict == "unstable"
    assert result.numbers["monitor_reversals"] == 3
    assert result.numbers["monitor_variation"] >= diagnosis.VARIATION_MAX
    assert result.numbers["monitor_max_drop"] < diagnosis.DROP_MAX  # the zig-zag rule fired


def test_a_one_epoch_collapse_is_unstable() -> None:
    history = _history(
        [0.2, 0.4, 0.55, 0.2, 0.5, 0.6, 0.62],
        [1.8, 1.5, 1.2, 1.9, 1.3, 1.1, 1.05],
        [1.9, 1.6, 1.3, 1.4, 1.2, 1.1, 1.0],
    )
    result = diagnose(history)
    assert result.verdict == "unstable"
    assert result.numbers["monitor_max_drop"] == pytest.approx(0.35)
    assert "optimizer.lr" in result.reason


def test_a_non_finite_loss_is_unstable() -> None:
    history = _history([0.2, 0.3, 0.4], [1.5, math.inf, 1.2], [1.6, 1.4, 1.2])
    result = diagnose(history)
    assert result.verdict == "unstable" and "not finite" in result.reason
    json.dumps(result.as_dict(), allow_nan=False)  # no inf/NaN among the logged numbers


def test_flat_curves_are_under_fitting() -> None:
    """The smoke sweep's lr=1e-12 trial: nothing moves."""
    history = _history(
        [1 / 7] * 5,
        [1.96, 1.96, 1.96, 1.96, 1.96],
        [1.95, 1.949, 1.948, 1.948, 1.947],
    )
    result = diagnose(history)
    assert result.verdict == "under_fitting"
    assert result.numbers["monitor_gain"] == 0
    assert "optimizer.lr" in result.reason


def test_a_barely_falling_train_loss_is_under_fitting() -> None:
    history = _history(
        [0.3, 0.33, 0.35, 0.35, 0.35, 0.35],
        [1.2, 1.1, 1.1, 1.1, 1.1, 1.1],
        [1.0, 0.99, 0.98, 0.98, 0.98, 0.98],
    )
    result = diagnose(history)
    assert result.verdict == "under_fitting"
    assert result.numbers["monitor_gain"] >= diagnosis.GAIN_MIN
    assert result.numbers["train_loss_drop"] == pytest.approx(0.02)


def test_a_degenerate_selected_model_is_under_fitting_whatever_the_curves() -> None:
    assert diagnose(LEVELLED, degenerate=True).verdict == "under_fitting"
    assert "one class" in diagnose(LEVELLED, degenerate=True).reason


@pytest.mark.parametrize("epochs", [0, 1, 2])
def test_one_or_two_epochs_are_too_few_to_judge(epochs: int) -> None:
    history = {k: v[:epochs] for k, v in IMPROVING.items()}
    result = diagnose(history, degenerate=True)
    assert result.verdict == "too_few_epochs"
    assert result.numbers["epochs"] == epochs
    assert str(diagnosis.MIN_EPOCHS) in result.reason
    assert result.summary().startswith("fit diagnosis: too few epochs")


def test_a_min_mode_monitor_is_judged_in_fractions_of_its_first_value() -> None:
    result = diagnose(IMPROVING, monitor="val/loss", mode="min")
    assert result.verdict == "still_improving"
    # Least-squares fall of val loss 1.5, 1.3, 1.1, 0.95, 0.85: 0.165/epoch, over epoch 1's 1.8.
    assert result.numbers["monitor_slope"] == pytest.approx(0.165 / 1.8)
    assert result.numbers["monitor_best"] == 0.85


def test_a_missing_monitor_falls_back_to_val_loss() -> None:
    result = diagnose(LEVELLED, monitor="val/macro_auc")
    assert result.monitor == "val/loss"
    assert result.verdict in VERDICTS


def test_summary_and_json_carry_the_numbers() -> None:
    result = diagnose(IMPROVING)
    line = result.summary()
    assert line.startswith("fit diagnosis: still improving: ")
    assert "monitor_slope=0.1" in line and "loss_gap=0.05" in line
    payload = json.loads(json.dumps(result.as_dict(), allow_nan=False))
    assert payload["verdict"] == "still_improving"
    assert payload["thresholds"]["SLOPE_MIN"] == diagnosis.SLOPE_MIN
    assert payload["numbers"]["monitor_slope"] == pytest.approx(0.1)


@pytest.mark.slow
def test_demo_training_run_carries_the_verdict(demo_run: DemoRun, tmp_path: Path) -> None:
    """The README's demo command, 2 epochs (the session's demo run, tests/demo_run.py): too few
    to judge, said as a tag, a log line, metrics and a JSON artifact, and the run still
    finishes."""
    proc, run_id = demo_run.proc, demo_run.run_id
    output = proc.stdout + proc.stderr
    assert "fit diagnosis: too few epochs: 2 epoch(s) of val/balanced_accuracy" in output
    mlflow.set_tracking_uri(demo_run.uri)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.fit_diagnosis"] == "too_few_epochs"
    assert "at least 3" in run.data.tags["derm_exp.fit_diagnosis_reason"]
    assert run.data.metrics["fit/epochs"] == 2
    assert "fit/loss_gap" in run.data.metrics and "fit/monitor_slope" in run.data.metrics
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="evaluation/fit_diagnosis.json", dst_path=str(tmp_path)
    )
    payload = json.loads(Path(local).read_text())
    assert payload["verdict"] == "too_few_epochs"
    assert payload["monitor"] == "val/balanced_accuracy"
    assert payload["numbers"]["loss_gap"] == pytest.approx(run.data.metrics["fit/loss_gap"])
