"""``python -m derm_exp.predict`` with an ensemble, the README's seed workflow on the demo:
a 2-seed sweep, ``derm_exp.ensemble group=<id> ... register=true``, then ``predict`` with the
registered ensemble, with ``model=[run1,run2]`` and with ``group=<id>``."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from derm_exp.errors import ModelSourceError, PredictionInputError
from derm_exp.inference import DISCLAIMER
from tests.conftest import compose_train
from tests.inference.conftest import DemoSweep, run_cli

pytestmark = pytest.mark.slow
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
PROBS = [f"prob_{c}" for c in CLASSES]
UNCERTAINTY = ["std", "entropy", "mutual_information", "disagreement"]


@pytest.fixture(scope="module")
def registered(demo_sweep: DemoSweep) -> DemoSweep:
    """The README's command, as written, on the sweep: registers ``models:/derm-ensemble/1``."""
    proc = run_cli(
        "derm_exp.ensemble",
        f"group={demo_sweep.group}",
        "aggregation=weighted_mean",
        "tta=medium",
        "register=true",
        *demo_sweep.store(),
        f"tracking.artifact_root={demo_sweep.root / 'mlruns'}",
        f"hydra.run.dir={demo_sweep.root / 'ensemble'}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "registered models:/derm-ensemble/1" in proc.stdout
    return demo_sweep


def _predict(sweep: DemoSweep, tmp_path: Path, *args: str):
    return run_cli("derm_exp.predict", *args, *sweep.store(), f"hydra.run.dir={tmp_path / 'run'}")


def test_registered_ensemble_predicts_one_image(registered: DemoSweep, tmp_path: Path) -> None:
    image = registered.images[0]
    out = tmp_path / "one.csv"
    proc = _predict(
        registered, tmp_path, "model=models:/derm-ensemble/1", f"image={image}", f"output={out}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has no artifact" not in proc.stderr
    text = proc.stdout
    assert "models:/derm-ensemble/1 (registered ensemble of 2: derm-classifier/1, " in text
    assert "weighted_mean" in text and "mutual information" in text and DISCLAIMER in text
    for member in ("derm-classifier/1", "derm-classifier/2"):
        assert any(line.split()[-4:-3] == [member] for line in text.splitlines()), member

    # The same numbers as the registered pyfunc model (the ensemble's own weights).
    table = pd.read_csv(out)
    mlflow.set_tracking_uri(registered.uri)
    pyfunc = mlflow.pyfunc.load_model("models:/derm-ensemble/1")
    expected = pyfunc.predict(pd.DataFrame({"image": [str(image)]}))
    np.testing.assert_allclose(table[PROBS].to_numpy(), expected[CLASSES].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(
        table[UNCERTAINTY].to_numpy(), expected[UNCERTAINTY].to_numpy(), atol=1e-5
    )
    assert (table["disclaimer"] == DISCLAIMER).all()


def test_a_list_of_runs_predicts_a_folder(demo_sweep: DemoSweep, tmp_path: Path) -> None:
    from derm_exp.inference.ensemble import load_ensemble_predictor

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in demo_sweep.images[:5]:
        shutil.copy(p, folder / p.name)
    (folder / "ISIC_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    runs = [demo_sweep.run_ids[1], demo_sweep.run_ids[2]]
    out = tmp_path / "x.csv"
    proc = _predict(
        demo_sweep,
        tmp_path,
        f"model=[{runs[0]},{runs[1]}]",
        f"image={folder}",
        f"output={out}",
        "tta=light",
        "aggregation=geometric_mean",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Predicted 5 of 6 image(s) with ensemble of 2" in proc.stdout
    assert "mean uncertainty: std" in proc.stdout and DISCLAIMER in proc.stdout
    assert "warning: 1 of 6 images could not be read" in proc.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == [
        "image",
        "predicted_class",
        "confidence",
        "uncertainty",
        *UNCERTAINTY,
        "decision",
        "reasons",
        *PROBS,
        "error",
        "disclaimer",
    ]
    assert table["image"].tolist() == [str(p) for p in sorted(folder.iterdir())]
    broken = table["image"].str.endswith("ISIC_broken.jpg")
    assert table.loc[broken, "error"].str.contains("cannot identify image file").all()
    assert table.loc[broken, [*PROBS, *UNCERTAINTY]].isna().all(axis=None)
    assert (table["disclaimer"] == DISCLAIMER).all()
    table = table[~broken]
    files = [Path(p) for p in table["image"]]
    assert table["error"].isna().all()

    ensemble = load_ensemble_predictor(
        runs, aggregation="geometric_mean", device="cpu", tracking_uri=demo_sweep.uri
    )
    expected = ensemble.predict(files, tta="light")
    np.testing.assert_allclose(
        table[PROBS].to_numpy(),
        [[r["probabilities"][c] for c in CLASSES] for r in expected],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        table[UNCERTAINTY].to_numpy(), [[r[k] for k in UNCERTAINTY] for r in expected], atol=1e-5
    )
    assert table["predicted_class"].tolist() == [r["predicted_class"] for r in expected]


def test_a_sweep_group_predicts_one_image(demo_sweep: DemoSweep, tmp_path: Path) -> None:
    proc = _predict(
        demo_sweep, tmp_path, f"group={demo_sweep.group}", f"image={demo_sweep.images[1]}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"ensemble of 2 (group {demo_sweep.group}: derm-classifier/1, derm-classifier/2; mean)"
        in proc.stdout
    )
    assert "Ensemble     std " in proc.stdout and DISCLAIMER in proc.stdout


def test_ensemble_user_errors(registered: DemoSweep, tmp_path: Path) -> None:
    from derm_exp.inference.sources import resolve_source
    from derm_exp.predict import predict

    image = str(registered.images[0])
    run = registered.run_ids[1]

    def run_predict(*overrides: str) -> None:
        cfg = compose_train(
            [f"image={image}", "device=cpu", f"tracking.uri={registered.uri}", *overrides],
            config_name="predict",
        )
        predict(cfg, tmp_path / "run")

    with pytest.raises(ModelSourceError, match="either model=... or group=<sweep id>, not both"):
        run_predict(f"model_ref={run}", f"group={registered.group}")
    with pytest.raises(PredictionInputError, match="aggregation=mean combines the members"):
        run_predict(f"model_ref={run}", "aggregation=mean")
    with pytest.raises(ModelSourceError, match="models:/derm-ensemble/1 is itself an ensemble"):
        run_predict(f"model_ref=[models:/derm-ensemble/1,{run}]")
    with pytest.raises(PredictionInputError, match="aggregation='median': choose one of mean"):
        run_predict(f"group={registered.group}", "aggregation=median")
    # Tools that take one classifier (evaluate) say what a registered ensemble is.
    with pytest.raises(ModelSourceError, match="is a registered ensemble .*, not one classifier"):
        resolve_source("models:/derm-ensemble/1", registered.uri)
