"""Selective prediction end to end: the threshold fitted on validation only and stored in the
checkpoint, applied by the predictor (Python API and ``python -m derm_exp.predict``); odd inputs
abstain; old checkpoints still predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from derm_exp.data.splits import load_split_csv
from derm_exp.evaluation.calibration import apply_temperature
from derm_exp.evaluation.selective import fit_threshold
from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.models.checkpoint import load_checkpoint, save_checkpoint
from tests.inference.conftest import TrainedModel, run_cli
from tests.inference.test_abstention_policy import EXPECTED, odd_images


def _val_logits(trained_model: TrainedModel) -> tuple[np.ndarray, np.ndarray]:
    """The validation split's logits, recomputed from the run's saved split CSV."""
    predictor = SkinLesionPredictor.from_checkpoint(
        trained_model.checkpoint, device="cpu", calibrate=False
    )
    val = load_split_csv(trained_model.output_dir / "splits" / "val.csv")
    batch = torch.stack([predictor.preprocess(p) for p in val["path"]])
    logits = predictor.logits(batch)[0].numpy()
    index = {c: i for i, c in enumerate(predictor.classes)}
    return logits, val["dx"].map(index).to_numpy()


def test_threshold_is_fitted_on_validation_and_stored(trained_model: TrainedModel) -> None:
    ck = load_checkpoint(trained_model.checkpoint)
    entry = ck["abstention"]
    assert entry["target"] == {"coverage": 0.9} and entry["fitted_on"] == "val"
    assert entry["quality"]["min_side"] == 32
    logits, labels = _val_logits(trained_model)
    probs = np.asarray(apply_temperature(logits, ck["temperature"]))
    conf, correct = probs.max(1), probs.argmax(1) == labels
    # The stored threshold is exactly the fit on the validation split, nothing else...
    refit = fit_threshold(conf, correct, coverage=0.9)
    assert entry["threshold"] == pytest.approx(refit["threshold"], abs=1e-5)
    assert entry["val"]["coverage"] >= 0.9 and entry["val"]["n"] == len(labels)
    # (tests/evaluation/test_selective_run.py asserts the fit receives nothing but these)


def test_odd_inputs_abstain_through_the_python_api(trained_model: TrainedModel) -> None:
    predictor = SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu")
    images = odd_images()
    results = predictor.predict_batch(list(images.values()), batch_size=8)
    for (name, _), r in zip(images.items(), results, strict=True):
        assert r["decision"] == "abstain", name
        assert set(EXPECTED[name]) <= set(r["reasons"]), (name, r["reasons"])
        assert r["abstention"]["threshold"] == pytest.approx(predictor.abstention.threshold)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)  # still given
    one = predictor.predict(images["thumbnail"])
    assert one["decision"] == "abstain" and "input_too_small" in one["reasons"]
    assert predictor.quality_reasons(images["strip"]) == EXPECTED["strip"]


def test_decisions_follow_the_threshold_and_tta(trained_model: TrainedModel) -> None:
    predictor = SkinLesionPredictor.from_checkpoint(trained_model.checkpoint, device="cpu")
    lesions = sorted((trained_model.data_root / "images").glob("*.jpg"))[:6]
    results = predictor.predict_batch(lesions)
    for r in results:  # demo lesions pass the gate: only the confidence decides
        expect = "abstain" if r["confidence"] < predictor.abstention.threshold else "predict"
        assert r["decision"] == expect
        assert r["reasons"] == ([] if expect == "predict" else ["low_confidence"])
    predictor.abstention = predictor.abstention.with_overrides({"threshold": 1.01})
    assert all(r["reasons"] == ["low_confidence"] for r in predictor.predict_batch(lesions))
    predictor.abstention = predictor.abstention.with_overrides({"threshold": 0, "max_view_std": 0})
    r = predictor.predict_with_tta(lesions[0], "medium")
    assert r["view_std"] > 0 and r["reasons"] == ["tta_disagreement"]


def test_old_checkpoint_predicts_without_threshold(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    ck = load_checkpoint(trained_model.checkpoint)
    del ck["abstention"]
    old = save_checkpoint(ck, tmp_path / "checkpoint_best.pt")
    predictor = SkinLesionPredictor.from_checkpoint(old, device="cpu")
    lesion = sorted((trained_model.data_root / "images").glob("*.jpg"))[0]
    r = predictor.predict(lesion)
    assert (r["decision"], r["reasons"]) == ("predict", [])
    assert r["abstention"] == {"threshold": None, "target": None, "source": "none",
                               "enabled": True}  # fmt: skip
    # the input-quality gate still applies
    assert predictor.predict(odd_images()["grey"])["reasons"] == ["not_colour"]


@pytest.mark.slow
def test_predict_cli_abstains_on_odd_files(trained_model: TrainedModel, tmp_path: Path) -> None:
    folder = tmp_path / "dropped"
    folder.mkdir()
    for name, image in odd_images().items():
        image.save(folder / f"{name}.png")
    lesion = sorted((trained_model.data_root / "images").glob("*.jpg"))[0]
    (folder / "zz_lesion.jpg").write_bytes(lesion.read_bytes())
    out = tmp_path / "preds.csv"
    store = (f"tracking.uri={trained_model.tracking_uri}", f"hydra.run.dir={tmp_path / 'run'}")
    proc = run_cli(
        "derm_exp.predict",
        f"model={trained_model.checkpoint}",
        f"image={folder}",
        f"output={out}",
        *store,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out, keep_default_na=False)
    rows = {Path(row["image"]).stem: row for _, row in table.iterrows()}
    for name, reasons in EXPECTED.items():
        assert rows[name]["decision"] == "abstain", name
        assert set(reasons) <= set(rows[name]["reasons"].split(";")), name
    abstained = (table["decision"] == "abstain").sum()
    assert f"abstained on {abstained} of 6 image(s)" in proc.stdout
    assert "input_too_small 2" in proc.stdout  # thumbnail and strip
    one = run_cli(
        "derm_exp.predict",
        f"model={trained_model.checkpoint}",
        f"image={folder / 'thumbnail.png'}",
        *store,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "Decision     ABSTAIN: input_too_small" in one.stdout
    bad = run_cli(
        "derm_exp.predict",
        f"model={trained_model.checkpoint}",
        f"image={folder / 'thumbnail.png'}",
        "abstain.threshold=high",
        *store,
        timeout=300,
    )
    assert bad.returncode != 0 and "error: abstain.threshold='high'" in bad.stderr
    assert "Traceback" not in bad.stderr
