"""The README's ONNX commands end to end (subprocesses) on the session's tiny trained model:
export (fp32, registered; int8), predict with backend=onnxruntime from the checkpoint and from
the .onnx file, evaluate with backend=onnxruntime; plus clear CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from derm_exp.exporting.metadata import read_metadata
from derm_exp.inference.predictor import SkinLesionPredictor
from tests.inference.conftest import TrainedModel, run_cli

pytestmark = pytest.mark.slow


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_readme_export_and_onnxruntime_commands(
    trained_model: TrainedModel, checkpoint_copy: Path, tmp_path: Path
) -> None:
    store = f"tracking.uri={trained_model.tracking_uri}"
    out = _ok(
        run_cli(
            "derm_exp.export",
            f"model={checkpoint_copy.parent}",
            "format=onnx",
            "register=true",
            store,
            f"hydra.run.dir={tmp_path / 'export'}",
        )
    )
    onnx_file = checkpoint_copy.with_name("checkpoint_best.onnx")
    assert f"ONNX model   {onnx_file}" in out and "validation images" in out
    assert f"runs:/{trained_model.run_id}/onnx/checkpoint_best.onnx" in out
    assert "Registered   models:/derm-classifier-onnx/" in out
    meta = read_metadata(onnx_file)
    assert meta["source"]["run_id"] == trained_model.run_id and meta["precision"] == "fp32"
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    logged = {a.path for a in MlflowClient().list_artifacts(trained_model.run_id, "onnx")}
    assert {"onnx/checkpoint_best.onnx", "onnx/checkpoint_best.onnx.json"} <= logged

    _ok(
        run_cli(
            "derm_exp.export",
            f"model={checkpoint_copy}",
            "format=onnx",
            "quantize=int8",
            "log_to_run=false",
            f"hydra.run.dir={tmp_path / 'export8'}",
        )
    )
    assert read_metadata(checkpoint_copy.with_name("checkpoint_best.int8.onnx"))["approximate"]

    images = trained_model.data_root / "images"
    csv = tmp_path / "preds.csv"
    proc = run_cli(
        "derm_exp.predict",
        f"model={checkpoint_copy}",
        f"image={images}",
        "backend=onnxruntime",
        "tta=medium",
        f"output={csv}",
        f"hydra.run.dir={tmp_path / 'predict'}",
    )
    _ok(proc)
    assert "exporting" not in proc.stderr  # the export beside the checkpoint was used
    rows = pd.read_csv(csv)
    torch_p = SkinLesionPredictor.from_checkpoint(checkpoint_copy, device="cpu")
    files = [Path(p) for p in rows["image"]]
    expected = torch_p.predict_batch(files, tta="medium")
    got = rows[[f"prob_{c}" for c in torch_p.classes]].to_numpy()
    want = np.array([[r["probabilities"][c] for c in torch_p.classes] for r in expected])
    np.testing.assert_allclose(got, want, atol=2e-5)  # CSV rounds to 6 decimals

    table = _ok(
        run_cli(
            "derm_exp.predict",
            f"model={checkpoint_copy.with_name('checkpoint_best.int8.onnx')}",
            f"image={files[0]}",
            "backend=onnxruntime",
            f"hydra.run.dir={tmp_path / 'predict1'}",
        )
    )
    assert "Predicted " in table and "Research and education only" in table

    evaluation = tmp_path / "evaluate"
    _ok(
        run_cli(
            "derm_exp.evaluate",
            f"model={checkpoint_copy}",
            "backend=onnxruntime",
            "tracking.enabled=false",
            "bootstrap.n_boot=0",
            f"hydra.run.dir={evaluation}",
        )
    )
    report = json.loads((evaluation / "evaluation_metrics.json").read_text())
    assert report["model"]["backend"] == "onnxruntime" and report["model"]["approximate"] is False


def test_cli_errors_are_one_line(trained_model: TrainedModel, tmp_path: Path) -> None:
    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(b"garbage")
    proc = run_cli(
        "derm_exp.predict",
        f"model={garbage}",
        f"image={trained_model.data_root / 'images'}",
        "backend=onnxruntime",
        f"hydra.run.dir={tmp_path / 'p'}",
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: cannot read ONNX model {garbage}" in proc.stderr
    proc = run_cli("derm_exp.export", f"model={trained_model.checkpoint}", "format=tflite")
    assert proc.returncode == 1 and "error: format=tflite: choose one of onnx" in proc.stderr
