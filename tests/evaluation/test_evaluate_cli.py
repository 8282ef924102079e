"""``python -m derm_exp.evaluate``: report files, MLflow evaluation run, calibration, lesions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from derm_exp.data.errors import DataValidationError
from derm_exp.models.checkpoint import load_checkpoint
from tests.cli import run_module
from tests.conftest import compose_train
from tests.demo_run import DemoRun
from tests.evaluation.conftest import evaluate_checkpoint
from tests.evaluation.subgroup_checks import check_subgroup_outputs
from tests.inference.conftest import TrainedModel

PLOTS = {"confusion_matrix.png", "roc_curves.png", "calibration.png", "per_class.png"}


def test_a_run_id_writes_report_and_logs_an_evaluation_run(
    trained_model: TrainedModel,
    tmp_path: Path,
) -> None:
    """In-process (the CLI runs the same function in the README commands' test below)."""
    from derm_exp.evaluate import evaluate

    out = tmp_path / "eval"
    cfg = compose_train(
        [
            f"model_ref={trained_model.run_id}",
            f"tracking.uri={trained_model.tracking_uri}",
            "tta=light",
            "bootstrap.n_boot=200",
            "subgroups.min_lesions=3",
            "data.num_workers=0",
            "device=cpu",
        ],
        config_name="evaluate",
    )
    evaluate(cfg, out)
    report = json.loads((out / "evaluation_metrics.json").read_text())
    assert {p.name for p in (out / "plots").glob("*.png")} >= PLOTS
    test_split = pd.read_csv(trained_model.output_dir / "splits" / "test.csv")
    assert report["n_samples"] == len(test_split)
    assert report["tta"]["views"] == ["identity", "hflip", "vflip", "rot180"]
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        ci = report["bootstrap"]["intervals"][name]
        assert ci["low"] <= report[name] <= ci["high"], name
    assert report["bootstrap"]["resampled"] == "lesions"
    assert report["bootstrap"]["n_groups"] == test_split["lesion_id"].nunique()
    assert set(report["per_class"]["mel"]) == {"precision", "recall", "f1", "support", "auc"}
    assert len(report["confusion_matrix_normalized"]) == 7

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    client = MlflowClient()
    train_run = client.get_run(trained_model.run_id)
    runs = client.search_runs([train_run.info.experiment_id], "tags.`derm_exp.kind` = 'evaluation'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["derm_exp.source_run"] == trained_model.run_id
    assert run.data.metrics["eval/balanced_accuracy"] == pytest.approx(report["balanced_accuracy"])
    assert "eval/macro_f1_ci_low" in run.data.metrics
    assert "eval/ece_calibrated" in run.data.metrics
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert logged >= PLOTS
    assert "evaluation_metrics.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not any(k.startswith("eval") for k in train_run.data.metrics)
    # In-process: the console line the CLI prints is gaps_line of the report's section.
    from derm_exp.evaluation.subgroup_report import gaps_line

    console = gaps_line(report["subgroups"]) or ""
    check_subgroup_outputs(out, trained_model.data_root, client, run.info.run_id, console)


def test_calibration_is_reported_before_and_after_and_fitted_on_validation(
    trained_model: TrainedModel,
    tmp_path: Path,
) -> None:
    stored = load_checkpoint(trained_model.checkpoint)["temperature"]
    auto = evaluate_checkpoint(trained_model, tmp_path / "auto")
    assert auto["temperature"]["value"] == pytest.approx(stored)
    assert {"ece", "nll", "brier"} <= set(auto["calibrated"])
    assert auto["calibrated"]["ece"] != auto["ece"]
    # Same model, same test split, no TTA: the numbers the training run logged.
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    logged = MlflowClient().get_run(trained_model.run_id).data.metrics
    assert auto["nll"] == pytest.approx(logged["test/nll"], abs=1e-5)
    assert auto["calibrated"]["ece"] == pytest.approx(logged["test/ece_calibrated"], abs=1e-5)
    # Refitting uses the run's validation split, like training did: same temperature.
    refit = evaluate_checkpoint(trained_model, tmp_path / "refit", "temperature=refit")
    assert refit["temperature"]["value"] == pytest.approx(stored, rel=1e-3)
    assert "validation" in refit["temperature"]["source"]


def test_lesion_level_has_one_sample_per_lesion(
    trained_model: TrainedModel,
    tmp_path: Path,
) -> None:
    result = evaluate_checkpoint(trained_model, tmp_path, "lesion_level=true")
    test_split = pd.read_csv(trained_model.output_dir / "splits" / "test.csv")
    assert result["n_samples"] == test_split["lesion_id"].nunique() < len(test_split)
    assert result["level"] == "lesion" and result["bootstrap"]["resampled"] == "lesions"
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert list(table["lesion_id"]) == list(dict.fromkeys(test_split["lesion_id"]))


def test_missing_images_in_a_split_csv_fail_clearly(
    trained_model: TrainedModel,
    tmp_path: Path,
) -> None:
    split = pd.read_csv(trained_model.output_dir / "splits" / "test.csv")
    split["path"] = "/elsewhere/" + split["image_id"] + ".jpg"
    split.to_csv(tmp_path / "moved.csv", index=False)
    with pytest.raises(DataValidationError, match=r"do not exist.*data\.root="):
        evaluate_checkpoint(trained_model, tmp_path / "out", f"split_csv={tmp_path / 'moved.csv'}")


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module(module, *args, cwd=cwd)


@pytest.mark.slow
def test_readme_evaluate_commands_on_a_demo_model(demo_run: DemoRun, tmp_path: Path) -> None:
    """The README's Evaluation commands as written, on the session's model trained with
    experiment=demo (tests/demo_run.py), evaluated into a copy of its store."""
    from mlflow.tracking import MlflowClient

    uri = demo_run.store_copy(tmp_path / "store")
    store = [f"tracking.uri={uri}"]
    run_id = demo_run.run_id
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias("derm-classifier", "seed-42").run_id == run_id
    splits = {s: pd.read_csv(demo_run.output_dir / "splits" / f"{s}.csv") for s in ("test", "val")}

    commands = {  # README "Evaluation", in order; the data.root one needs a HAM10000 folder
        "run": [f"model={run_id}"],
        "alias": ["model=models:/derm-classifier@seed-42", "tta=medium"],
        "latest": ["model=models:/derm-classifier/latest", "split=val"],
        "folder": [f"model={demo_run.output_dir}", "lesion_level=true"],
    }
    reports = {}
    for name, args in commands.items():
        out = tmp_path / f"eval-{name}"
        # The first command exactly as written; the others skip what it already covered.
        fast = [] if name == "run" else ["bootstrap.n_boot=0", "data.num_workers=0"]
        proc = _cli("derm_exp.evaluate", *args, *store, *fast, f"hydra.run.dir={out}", cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr and "MLflow evaluation run:" in proc.stdout
        reports[name] = json.loads((out / "evaluation_metrics.json").read_text())
        assert reports[name]["model"]["run_id"] == run_id, name
        assert all(e["available"] for e in reports[name]["subgroups"]["attributes"].values())

    run, alias, latest, folder = reports.values()
    assert (run["model"]["kind"], alias["model"]["kind"]) == ("run", "registry")
    assert alias["model"]["model_version"] == latest["model"]["model_version"] == "1"
    assert folder["model"]["kind"] == "checkpoint"
    # The run's own test split, as logged by training (same weights, no TTA).
    assert run["n_samples"] == alias["n_samples"] == len(splits["test"])
    logged = client.get_run(run_id).data.metrics
    assert run["balanced_accuracy"] == pytest.approx(logged["test/balanced_accuracy"], abs=1e-6)
    ci = run["bootstrap"]["intervals"]["balanced_accuracy"]
    assert ci["low"] <= run["balanced_accuracy"] <= ci["high"]
    assert alias["tta"]["mode"] == "medium" and len(alias["tta"]["views"]) == 8
    assert latest["n_samples"] == len(splits["val"]) and latest["data"] == "run split:val"
    assert folder["level"] == "lesion"
    assert folder["n_samples"] == splits["test"]["lesion_id"].nunique()
    evaluations = client.search_runs(
        [client.get_run(run_id).info.experiment_id], "tags.`derm_exp.kind` = 'evaluation'"
    )
    assert {r.data.tags["derm_exp.source_run"] for r in evaluations} == {run_id}
    assert len(evaluations) == 4
