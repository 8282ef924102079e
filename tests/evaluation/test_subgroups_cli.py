"""Subgroups through ``derm_exp.evaluate`` and the end-of-run report, for an image-only model
(the session's tiny model trained on the generated demo data). The README command line itself
is checked in tests/evaluation/test_evaluate_cli.py (:mod:`tests.evaluation.subgroup_checks`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from derm_exp.errors import ConfigError
from tests.evaluation.conftest import evaluate_checkpoint
from tests.inference.conftest import TrainedModel


def _evaluate(model: TrainedModel, out: Path, *overrides: str) -> dict:
    return evaluate_checkpoint(model, out, *overrides, n_boot=20)


def test_missing_metadata_is_unavailable_and_subgroups_can_be_turned_off(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    meta = pd.read_csv(trained_model.data_root / "HAM10000_metadata.csv")
    meta.drop(columns=["age"]).to_csv(tmp_path / "no_age.csv", index=False)
    result = _evaluate(
        trained_model, tmp_path / "a", f"subgroups.metadata_file={tmp_path}/no_age.csv"
    )
    attributes = result["subgroups"]["attributes"]
    assert attributes["age_band"] == {
        "available": False,
        "reason": "no 'age' column in the evaluated data",
    }
    assert attributes["sex"]["available"]
    table = pd.read_csv(tmp_path / "a" / "subgroups.csv")
    assert table.loc[table["attribute"] == "age_band", "flags"].item().startswith("unavailable")
    # The default minimum (30 lesions) flags every group of this small test split.
    groups = [g for e in attributes.values() if e["available"] for g in e["groups"].values()]
    assert all(("few_lesions" in g["flags"]) == (g["n_lesions"] < 30) for g in groups)

    off = _evaluate(trained_model, tmp_path / "b", "subgroups.enabled=false")
    assert off["subgroups"] is None and not (tmp_path / "b" / "subgroups.csv").exists()
    assert not (tmp_path / "b" / "plots" / "subgroups.png").exists()
    with pytest.raises(ConfigError, match="subgroups.min_lesions=0"):
        _evaluate(trained_model, tmp_path / "c", "subgroups.min_lesions=0")


def test_training_report_logs_the_test_subgroups(trained_model: TrainedModel) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained_model.tracking_uri)
    run_id = trained_model.run_id
    assert "evaluation/subgroups.csv" in {
        a.path for a in client.list_artifacts(run_id, "evaluation")
    }
    assert "plots/subgroups.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
    local = client.download_artifacts(run_id, "evaluation/test_metrics.json")
    section = json.loads(Path(local).read_text())["test"]["subgroups"]
    test_split = pd.read_csv(trained_model.output_dir / "splits" / "test.csv")
    assert section["all"]["n_images"] == len(test_split)
    sizes = [g["n_images"] for g in section["attributes"]["sex"]["groups"].values()]
    assert sum(sizes) == len(test_split)
    logged = client.get_run(run_id).data.metrics
    gaps = {
        f"test/subgroup_gap_{m}_{a}": g["value"]
        for a, e in section["attributes"].items()
        for m, g in e["gaps"].items()
        if g["value"] is not None
    }
    assert {k: logged[k] for k in gaps} == pytest.approx(gaps)
    groups = [g for e in section["attributes"].values() for g in e["groups"].values()]
    assert all(("few_lesions" in g["flags"]) == (g["n_lesions"] < 30) for g in groups)
