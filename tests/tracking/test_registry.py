"""Model registry: a tiny run registers its best checkpoint; search, aliases, pyfunc round trip."""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from derm_exp.errors import PredictionInputError, RegistryError
from derm_exp.tracking.model_lookup import resolve_version
from derm_exp.tracking.registry_search import build_filter, search_versions, top_k
from derm_exp.training.registration import register_best_model, selected_val_metrics


@pytest.fixture
def quick_fit(monkeypatch: pytest.MonkeyPatch):
    """``fit`` without the end-of-training test report (bootstrap CIs, plots: seconds of CPU).

    Registration only needs the selected checkpoint; the full report before registration runs
    in the seed-sweep test (tests/inference/test_ensemble_cli.py).
    """
    from derm_exp.training import trainer

    monkeypatch.setattr(trainer, "final_report", lambda *a, **k: {"balanced_accuracy": 0.0})
    return _fit


def _fit(cfg: DictConfig, out: Path) -> str:
    from derm_exp.training.trainer import fit

    fit(cfg, out)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([exp.experiment_id])
    return run.info.run_id


def test_best_checkpoint_is_registered_and_loads_with_pyfunc(
    tiny_cfg: DictConfig, tmp_path: Path, demo_data: Path, quick_fit
) -> None:
    from derm_exp.inference.predictor import DISCLAIMER, SkinLesionPredictor

    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
        tiny_cfg.seed = 5
        tiny_cfg.tracking.tags = {"group": "g-test"}
        # One epoch at 32 px predicts one class: registered only because this says so.
        tiny_cfg.registry.allow_degenerate = True
    run_id = quick_fit(tiny_cfg, tmp_path / "out")
    run = MlflowClient().get_run(run_id)

    (version,) = search_versions("derm-classifier", group="g-test", tags={"seed": 5})
    assert version.run_id == run_id
    tags = version.tags
    for key in ("backbone", "head", "loss", "augment", "seed", "data_fingerprint", "group"):
        assert tags[key] == run.data.tags[key], key
    assert tags["classes"] == "akiec,bcc,bkl,df,mel,nv,vasc"
    assert tags["best_epoch"] == "1"
    assert tags["degenerate"] == "true" and tags["monitor_mode"] == "max"
    assert float(tags["val_balanced_accuracy"]) == pytest.approx(
        run.data.metrics["val/balanced_accuracy"]
    )
    assert not any(k.startswith("test") for k in tags)  # nothing to rank on test data
    from_store = selected_val_metrics(0, run_id=run_id)  # without the trainer's history
    assert from_store["balanced_accuracy"] == pytest.approx(float(tags["val_balanced_accuracy"]))
    assert search_versions("derm-classifier", filter="tags.head = 'ACRNNHead'") == []
    assert resolve_version("models:/derm-classifier@seed-5").version == version.version
    assert resolve_version("models:/derm-classifier@latest-seed-5").version == version.version
    assert resolve_version("models:/derm-classifier/latest").version == version.version

    local = Path(mlflow.artifacts.download_artifacts("models:/derm-classifier@seed-5"))
    assert not list(local.rglob("*.pkl"))  # logged from code: nothing is unpickled at load
    assert (local / "artifacts" / "checkpoint_best.pt").is_file()

    images = sorted(str(p) for p in (demo_data / "images").glob("*.jpg"))[:4]
    model = mlflow.pyfunc.load_model("models:/derm-classifier@seed-5")
    out = model.predict(pd.DataFrame({"image": images}))
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert list(out.columns) == [*classes, "decision", "reasons"]  # selective prediction
    assert set(out["decision"]) <= {"predict", "abstain"}
    assert all(isinstance(r, list) for r in out["reasons"])
    assert out.attrs["disclaimer"] == DISCLAIMER
    predictor = SkinLesionPredictor.from_checkpoint(
        tmp_path / "out" / "checkpoint_best.pt", device="cpu"
    )
    probs = out[classes].to_numpy(dtype=float)
    np.testing.assert_allclose(probs, predictor.predict_proba(images), atol=1e-6)
    raw = [Path(p).read_bytes() for p in images]
    for other in (
        pd.DataFrame({"image": raw}),
        [base64.b64encode(b).decode() for b in raw],
        images,
    ):
        np.testing.assert_allclose(
            model.predict(other)[classes].to_numpy(dtype=float), probs, atol=1e-6
        )
    with pytest.raises(PredictionInputError, match="neither an existing file nor base64"):
        model.predict(["/no/such/image.jpg"])
    # The same run's same checkpoint is not registered twice (e.g. a resumed run that trained
    # on without a better epoch).
    again = register_best_model(tiny_cfg, run_id, tmp_path / "out" / "checkpoint_best.pt")
    assert str(again.version) == str(version.version)
    assert len(search_versions("derm-classifier")) == 1


def test_registry_disabled_registers_nothing(
    tiny_cfg: DictConfig, tmp_path: Path, quick_fit
) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
        tiny_cfg.registry.enabled = False
    quick_fit(tiny_cfg, tmp_path / "out")
    assert MlflowClient().search_registered_models() == []


def _version(version: int, **tags: str) -> ModelVersion:
    return ModelVersion("m", str(version), 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()])


def test_top_k_ranks_by_validation_metrics_only() -> None:
    versions = [
        _version(1, val_balanced_accuracy="0.5", val_nll="0.9"),
        _version(2, val_balanced_accuracy="0.7", val_nll="1.2"),
        _version(3, val_balanced_accuracy="0.6", val_nll="0.8"),
    ]
    assert [v.version for v in top_k(versions, 2, "val_balanced_accuracy")] == ["2", "3"]
    assert [v.version for v in top_k(versions, 1, "val/nll")] == ["3"]  # lower is better
    with pytest.raises(RegistryError, match="only validation metrics"):
        top_k(versions, 1, "test_balanced_accuracy")
    with pytest.raises(RegistryError, match="has no tag 'val_macro_auc'"):
        top_k(versions, 1, "val_macro_auc")


def test_filters_and_uris() -> None:
    assert build_filter(
        "derm-classifier",
        group="2026-01-01/10-00-00",
        tags={"backbone": "b0", "seed": None, "derm_exp.x": 1},
        filter="tags.head = 'ACRNNHead'",
    ) == (
        "name = 'derm-classifier' AND tags.group = '2026-01-01/10-00-00' AND "
        "tags.backbone = 'b0' AND tags.`derm_exp.x` = '1' AND tags.head = 'ACRNNHead'"
    )
    with pytest.raises(RegistryError, match="models:/NAME/VERSION"):
        resolve_version("derm-classifier/3")
