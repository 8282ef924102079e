"""The README's demo training against the shared server, then everything that reads it back:

    python -m derm_exp.train experiment=demo trainer.max_epochs=2 tracking.uri=http://127.0.0.1:PORT
    python -m derm_exp.evaluate model=<run id> tracking.uri=http://127.0.0.1:PORT

Artifacts go through the server (``mlflow-artifacts:`` URIs): evaluation by run id works from
another folder after the training output folder is gone, the model registers, a registry query
finds it for an ensemble, and a server restart (stop, start) loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.server.helpers import Server, demo_args, processes_under, run_id_of, run_module

pytestmark = pytest.mark.slow


@dataclass
class Trained:
    run_id: str
    out: Path  # the run's output folder (local checkpoints)
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def trained(server: Server, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    tmp = tmp_path_factory.mktemp("server_train")
    out = tmp / "out"
    args = ["experiment=demo", "trainer.max_epochs=2", *demo_args(demo_dir, server.uri)]
    result = run_module("derm_exp.train", [*args, f"hydra.run.dir={out}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return Trained(run_id_of(result), out, result.stdout, result.stderr)


def _checkpoint_digest(server: Server, run_id: str, dst: Path) -> str:
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="checkpoints/checkpoint_best.pt",
        dst_path=str(dst),
        tracking_uri=server.uri,
    )
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_training_logs_to_the_server_which_keeps_the_artifacts(
    server: Server, trained: Trained
) -> None:
    client = MlflowClient(server.uri)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied, no shared folder
    logged = {a.path for a in client.list_artifacts(trained.run_id, "checkpoints")}
    assert {"checkpoints/checkpoint_best.pt", "checkpoints/checkpoint_latest.pt"} <= logged
    stored = list((server.dir / "artifacts").rglob("checkpoint_best.pt"))
    assert stored, "the server keeps the artifacts in its own folder"
    [version] = client.search_model_versions(f"run_id = '{trained.run_id}'")
    assert version.name == "derm-classifier" and version.tags["seed"] == "42"
    assert f"registered models:/derm-classifier/{version.version}" in trained.stdout
    overrides = (trained.out / ".hydra" / "overrides.yaml").read_text()
    assert f"tracking.uri={server.uri}" in overrides
    server.assert_no_secret(
        trained.stdout,
        trained.stderr,
        overrides,
        json.dumps(run.data.params),
        json.dumps(run.data.tags),
    )


def test_evaluate_by_run_id_from_elsewhere_reads_the_checkpoint_through_the_server(
    server: Server, trained: Trained, tmp_path: Path
) -> None:
    shutil.rmtree(trained.out)  # the local checkpoints are gone: only the server has them
    result = run_module(
        "derm_exp.evaluate",
        [
            f"model={trained.run_id}",
            f"tracking.uri={server.uri}",
            "bootstrap.n_boot=0",
            "data.num_workers=0",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Evaluated " in result.stdout and "(run split:test)" in result.stdout
    report = json.loads((tmp_path / "eval" / "evaluation_metrics.json").read_text())
    assert report["n_samples"] > 0 and 0.0 <= report["balanced_accuracy"] <= 1.0
    evaluations = MlflowClient(server.uri).search_runs(
        [MlflowClient(server.uri).get_run(trained.run_id).info.experiment_id],
        f"tags.`derm_exp.source_run` = '{trained.run_id}'",
    )
    assert len(evaluations) == 1  # the evaluation run was logged to the server too


def test_the_registered_model_predicts_and_joins_an_ensemble_query(
    server: Server, trained: Trained, demo_dir: Path, tmp_path: Path
) -> None:
    from derm_exp.inference.ensemble import select_members

    [version] = MlflowClient(server.uri).search_model_versions(f"run_id = '{trained.run_id}'")
    images = sorted((demo_dir / "images").glob("*.jpg"))[:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in images:
        shutil.copy(image, folder / image.name)
    result = run_module(
        "derm_exp.predict",
        [
            f"model=models:/derm-classifier/{version.version}",
            f"image={folder}",
            f"output={tmp_path / 'preds.csv'}",
            f"tracking.uri={server.uri}",
            f"hydra.run.dir={tmp_path / 'predict'}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ref = f"models:/derm-classifier/{version.version} (registry, run {trained.run_id})"
    assert f"Predicted {len(images)} image(s) with {ref}" in result.stdout
    assert len((tmp_path / "preds.csv").read_text().splitlines()) == 1 + len(images)

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.uri)
    try:
        [member] = select_members(tags={"seed": 42}, filter=f"run_id = '{trained.run_id}'")
    finally:
        mlflow.set_tracking_uri(previous)
    assert member.run_id == trained.run_id and member.model_version == version.version
    assert member.checkpoint.is_file()
    assert server.dir not in member.checkpoint.parents  # downloaded, not read in place


def test_a_restart_loses_nothing(server: Server, trained: Trained, tmp_path: Path) -> None:
    client = MlflowClient(server.uri)
    run = client.get_run(trained.run_id)
    versions = client.search_model_versions("name = 'derm-classifier'")
    digest = _checkpoint_digest(server, trained.run_id, tmp_path / "before")

    stopped = server.cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "MLflow server stopped" in stopped.stdout and "PostgreSQL stopped" in stopped.stdout
    assert not processes_under(server.base)
    assert server.cli("status").returncode == 3
    started = server.cli("start")  # the saved settings: same ports
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"tracking.uri={server.uri}" in started.stdout

    again = MlflowClient(server.uri).get_run(trained.run_id)
    assert again.data.params == run.data.params and again.data.metrics == run.data.metrics
    assert again.data.tags == run.data.tags and again.info.status == "FINISHED"
    after = MlflowClient(server.uri).search_model_versions("name = 'derm-classifier'")
    assert sorted((v.version, v.run_id) for v in after) == sorted(
        (v.version, v.run_id) for v in versions
    )
    assert _checkpoint_digest(server, trained.run_id, tmp_path / "after") == digest
