"""A metadata-fusion model end to end, with the README's command lines: it trains, resumes,
registers, evaluates (with the split's metadata and with it withheld) and predicts (folder +
metadata CSV), with identical probabilities through the predictor, the registry pyfunc and
``derm_exp.evaluate``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from derm_exp.data.metadata import CLASSES
from derm_exp.data.metadata_encoding import MetadataEncoder
from derm_exp.models.checkpoint import load_checkpoint
from tests.cli import run_module
from tests.tiny import tiny

pytestmark = pytest.mark.slow
FIELDS = ["age", "sex", "localization"]


@dataclass(frozen=True)
class MetaRun:
    base: Path
    run_id: str
    uri: str
    first: Path
    second: Path


def _run_id(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("derm_exp").experiment_id])
    return run.info.run_id


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> MetaRun:
    """``derm_exp.train ... model.metadata=concat`` stopped by its time budget after epoch 1,
    then ``derm_exp.train resume=<run id>`` to its second and last epoch."""
    base = tmp_path_factory.mktemp("metadata_run")
    uri = f"sqlite:///{base}/mlflow.db"
    store = [f"tracking.uri={uri}", f"tracking.artifact_root={base}/mlruns"]
    first = run_module(
        "derm_exp.train",
        *tiny("model.metadata=concat", "trainer.max_epochs=2", "trainer.max_time_minutes=0.001"),
        *("evaluation.n_boot=20", "explain.gallery=false", "registry.allow_degenerate=true"),
        f"data.root={demo_data}",
        *store,
        f"hydra.run.dir={base}/first",
    )
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = _run_id(uri)
    second = run_module(
        "derm_exp.train",
        f"resume={run_id}",
        "trainer.max_time_minutes=1000",
        *store,
        f"hydra.run.dir={base}/second",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    return MetaRun(base, run_id, uri, base / "first", base / "second")


def test_trains_resumes_and_stores_the_train_split_encoder(meta_run: MetaRun) -> None:
    first = load_checkpoint(meta_run.first / "checkpoint_latest.pt")
    latest = load_checkpoint(meta_run.second / "checkpoint_latest.pt")
    assert (first["epoch"], latest["epoch"]) == (0, 1)
    assert latest["choices"]["model/metadata"] == "concat"
    train = pd.read_csv(meta_run.first / "splits" / "train.csv")
    expected = MetadataEncoder.fit(train, FIELDS).to_dict()
    assert latest["metadata_encoding"] == expected
    everything = pd.concat(pd.read_csv(p) for p in (meta_run.first / "splits").glob("*.csv"))
    assert MetadataEncoder.fit(everything, FIELDS).to_dict() != expected  # train only, really
    best = load_checkpoint(meta_run.second / "checkpoint_best.pt")
    assert best["metadata_encoding"] == expected


def _evaluate(meta_run: MetaRun, out: Path, *extra: str) -> pd.DataFrame:
    proc = run_module(
        "derm_exp.evaluate",
        f"model={meta_run.run_id}",
        f"tracking.uri={meta_run.uri}",
        "tracking.enabled=false",
        "bootstrap.n_boot=20",
        "data.num_workers=0",
        "device=cpu",
        *extra,
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "evaluation_metrics.json").read_text())
    assert report["model"]["metadata"] == (extra[0].split("=")[1] if extra else "auto")
    table = pd.read_csv(out / "predictions.csv")
    return table[[f"prob_calibrated_{c}" for c in CLASSES]].to_numpy()


def test_predictor_pyfunc_and_evaluate_give_identical_probabilities(
    meta_run: MetaRun, tmp_path: Path
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from derm_exp.inference.predictor import SkinLesionPredictor

    evaluated = _evaluate(meta_run, tmp_path / "eval")
    withheld = _evaluate(meta_run, tmp_path / "withheld", "metadata=withheld")
    test = pd.read_csv(meta_run.first / "splits" / "test.csv", dtype={"sex": str})
    records = test[FIELDS].astype(object).where(test[FIELDS].notna(), None).to_dict("records")
    predictor = SkinLesionPredictor.from_run(meta_run.run_id, meta_run.uri, device="cpu")
    direct = predictor.predict_proba(list(test["path"]), metadata=records)
    np.testing.assert_allclose(direct, evaluated, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(list(test["path"])), withheld, atol=1e-6)
    assert not np.allclose(evaluated, withheld, atol=1e-4)  # the metadata changes the output

    versions = MlflowClient(meta_run.uri).search_model_versions("name='derm-classifier'")
    assert versions and all(v.tags.get("metadata") == "concat" for v in versions)
    mlflow.set_tracking_uri(meta_run.uri)
    newest = max(int(v.version) for v in versions)
    pyfunc = mlflow.pyfunc.load_model(f"models:/derm-classifier/{newest}")
    frame = pd.DataFrame({"image": test["path"], **{f: test[f] for f in FIELDS}})
    np.testing.assert_allclose(pyfunc.predict(frame)[list(CLASSES)], evaluated, atol=1e-6)


def test_predict_cli_reads_a_metadata_csv_for_a_folder(meta_run: MetaRun, tmp_path: Path) -> None:
    from derm_exp.inference.predictor import SkinLesionPredictor

    test = pd.read_csv(meta_run.first / "splits" / "test.csv").head(4)
    folder = tmp_path / "images"
    folder.mkdir()
    for p in test["path"]:
        shutil.copy(p, folder)
    meta = test[["image_id", *FIELDS]].copy()
    meta.loc[0, "localization"] = "moon"  # never seen in training: a warning, the unknown code
    meta.to_csv(tmp_path / "meta.csv", index=False)
    out = tmp_path / "predictions.csv"
    checkpoint = meta_run.second / "checkpoint_best.pt"
    proc = run_module(
        "derm_exp.predict",
        f"model={checkpoint}",
        f"image={folder}",
        f"metadata={tmp_path / 'meta.csv'}",
        f"output={out}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("'moon' was not seen in training") == 1
    table = pd.read_csv(out)
    table.index = [Path(p).stem for p in table["image"]]
    got = table.loc[list(test["image_id"]), [f"prob_{c}" for c in CLASSES]].to_numpy()
    predictor = SkinLesionPredictor.from_checkpoint(checkpoint, device="cpu")
    records = meta[FIELDS].astype(object).where(meta[FIELDS].notna(), None).to_dict("records")
    paths = [str(folder / Path(p).name) for p in test["path"]]
    np.testing.assert_allclose(got, predictor.predict_proba(paths, metadata=records), atol=1e-6)
    bad = run_module(
        "derm_exp.predict",
        f"model={checkpoint}",
        f"image={folder}",
        f"metadata={tmp_path / 'nothing.csv'}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'run2'}",
    )
    assert bad.returncode == 1
    assert "error: metadata CSV not found" in bad.stderr
    assert "Traceback" not in bad.stderr
