"""What a ``derm_exp.evaluate`` output folder and its MLflow run must hold about subgroups
(used by the CLI test of tests/evaluation/test_evaluate_cli.py, which runs the README command)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from derm_exp.data.metadata import CLASSES
from derm_exp.evaluation.metrics import classification_metrics
from derm_exp.evaluation.subgroups import subgroup_values


def check_subgroup_outputs(out: Path, data_root: Path, client, run_id: str, stdout: str) -> None:
    """The run's test split has no metadata columns, so they come from the run's dataset
    (``data_root``); table, plot and MLflow gaps agree with the metrics of the filtered
    predictions of ``predictions.csv``."""
    assert "subgroup balanced-accuracy gaps (max - min): sex " in stdout
    section = json.loads((out / "evaluation_metrics.json").read_text())["subgroups"]
    assert all(e["available"] for e in section["attributes"].values())
    assert (out / "plots" / "subgroups.png").stat().st_size > 0
    table = pd.read_csv(out / "subgroups.csv")
    assert set(table["attribute"]) == {"all", "sex", "age_band", "localization"}

    preds = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    meta = pd.read_csv(data_root / "HAM10000_metadata.csv", dtype={"image_id": str})
    preds = preds.merge(meta[["image_id", "age", "sex", "localization"]], on="image_id")
    y = preds["label"].map(CLASSES.index).to_numpy()
    probs = preds[[f"prob_calibrated_{c}" for c in CLASSES]].to_numpy()
    values = subgroup_values(preds)
    for attribute, entry in section["attributes"].items():
        for name, group in entry["groups"].items():
            mask = values[attribute] == name
            expected = classification_metrics(y[mask], probs[mask], CLASSES)
            assert group["n_images"] == mask.sum(), (attribute, name)
            got = group["metrics"]["balanced_accuracy"]["point"]
            assert got == pytest.approx(expected["balanced_accuracy"], abs=1e-6)
            assert group["metrics"]["ece"]["point"] == pytest.approx(expected["ece"], abs=1e-5)

    metrics = client.get_run(run_id).data.metrics
    for attribute, entry in section["attributes"].items():
        for metric, gap in entry["gaps"].items():
            name = f"eval/subgroup_gap_{metric}_{attribute}"
            if gap["value"] is None:
                assert name not in metrics
            else:
                assert metrics[name] == pytest.approx(gap["value"])
    assert "eval/subgroup_gap_balanced_accuracy_sex" in metrics
    assert "subgroups.csv" in {a.path for a in client.list_artifacts(run_id)}
    assert "plots/subgroups.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
