"""``python -m derm_exp.predict``: a folder gives one CSV row per image file (an unreadable one
with its error); clear user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derm_exp.config import PROJECT_ROOT
from derm_exp.errors import ModelSourceError, PredictionInputError
from derm_exp.inference import DISCLAIMER
from tests.conftest import compose_train
from tests.inference.conftest import TrainedModel

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "derm_exp.predict", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, suffix in enumerate((".jpg", ".png", ".JPEG")):
        Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(
            folder / f"img{i}{suffix}", format="PNG" if suffix == ".png" else "JPEG"
        )
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def test_folder_writes_one_row_per_image(trained_model: TrainedModel, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    out = tmp_path / "preds.csv"
    proc = _cli(
        f"model={trained_model.run_id}",
        f"image={folder}",
        "tta=medium",
        f"output={out}",
        f"tracking.uri={trained_model.tracking_uri}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr  # some images were predicted
    table = pd.read_csv(out)
    # Every image file has its row, in file name order; the unreadable one says why.
    assert [Path(p).name for p in table["image"]] == [
        "broken.jpg",
        "img0.jpg",
        "img1.png",
        "img2.JPEG",
    ]
    assert list(table.columns) == [
        "image",
        "predicted_class",
        "confidence",
        "uncertainty",
        "view_std",
        "decision",
        "reasons",
        *(f"prob_{c}" for c in CLASSES),
        "error",
        "disclaimer",
    ]
    good, broken = table.iloc[1:], table.iloc[0]
    np.testing.assert_allclose(good[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-4)
    assert good["error"].isna().all()
    assert "cannot identify image file" in broken["error"]
    assert broken.drop(["image", "error", "disclaimer"]).isna().all()
    # 30-32 x 40 px random noise: colourful and varied, but too small for the gate (min side 32)
    assert good["decision"].iloc[:2].tolist() == ["abstain", "abstain"]
    assert good["reasons"].iloc[:2].str.contains("input_too_small").all()
    assert "input_too_small" not in str(good["reasons"].iloc[2])  # 32 px: just large enough
    assert (table["disclaimer"] == DISCLAIMER).all()
    assert "Predicted 3 of 4 image(s)" in proc.stdout
    assert "warning: 1 of 4 images could not be read" in proc.stderr


def test_a_folder_of_unreadable_files_fails_with_its_rows(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"\x89PNG not really")
    out = tmp_path / "preds.csv"
    proc = _cli(
        f"model={trained_model.checkpoint}",
        f"image={folder}",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 1
    assert "error: none of the 2 images could be read" in proc.stderr
    assert "Traceback" not in proc.stderr
    table = pd.read_csv(out)
    assert table["image"].tolist() == [str(folder / "a.jpg"), str(folder / "b.png")]
    assert table["error"].notna().all() and table["predicted_class"].isna().all()


def test_single_image_prints_a_sorted_table(trained_model, tmp_path, capsys) -> None:
    from derm_exp.predict import predict

    image = tmp_path / "one.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 20, 3), np.uint8)).save(image)
    cfg = compose_train(
        [f"model_ref={trained_model.checkpoint}", f"image={image}", "device=cpu"],
        config_name="predict",
    )
    [found] = predict(cfg, tmp_path / "run")
    result = found.result
    assert cfg.amp == "off"  # fp32 unless asked: YAML must not read it as False
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines() if line[2:8].strip() in CLASSES]
    ordered = sorted(result["probabilities"], key=result["probabilities"].get, reverse=True)
    assert rows == ordered
    assert DISCLAIMER in text and not (tmp_path / "run" / "predictions.csv").exists()


def test_user_errors(trained_model: TrainedModel, tmp_path: Path) -> None:
    from derm_exp.predict import predict

    def run(**kw: str) -> None:
        overrides = [f"model_ref={trained_model.checkpoint}", "device=cpu"]
        predict(
            compose_train(overrides + [f"{k}={v}" for k, v in kw.items()], config_name="predict"),
            tmp_path / "run",
        )

    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictionInputError, match="no such file or folder"):
        run(image=str(tmp_path / "missing.jpg"))
    with pytest.raises(PredictionInputError, match="no images .* in folder"):
        run(image=str(tmp_path / "empty"))
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    with pytest.raises(ModelSourceError, match="not an MLflow run id"):
        predict(
            compose_train(["model_ref=no-such-model", f"image={image}"], config_name="predict"),
            tmp_path / "run",
        )
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(PredictionInputError, match="cannot read image .*broken.jpg: Unidentified"):
        run(image=str(broken))
    with pytest.raises(PredictionInputError, match="amp='fp8': choose off, bf16"):
        run(image=str(image), amp="fp8")
    with pytest.raises(ModelSourceError, match="no model given"):
        predict(compose_train([f"image={image}"], config_name="predict"), tmp_path / "run")


def test_cli_names_the_valid_tta_modes(tmp_path: Path) -> None:
    proc = _cli("model=x", "image=y", "tta=huge", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "huge" in proc.stderr and "medium" in proc.stderr
