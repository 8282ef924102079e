"""Telling runs apart: group options as tags, the old class-name tags, the experiment kind."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.tracking import MlflowClient

from derm_exp.tracking.choices import (
    choice_tags,
    default_run_name,
    derive_choices,
    legacy_option,
    other_spellings,
)
from derm_exp.tracking.mlflow_run import EXPERIMENT_KIND_TAG, setup_experiment
from tests.conftest import compose_train


def test_choices_are_derived_from_a_config_without_hydra() -> None:
    cfg = compose_train(["experiment=demo", "model.head=acrnn", "loss=label_smoothing"])
    choices = derive_choices(cfg)
    assert {k: choices[k] for k in ("model", "model/head", "loss", "augment", "scheduler")} == {
        "model": "tiny",
        "model/head": "acrnn",
        "loss": "label_smoothing",
        "augment": "light",
        "scheduler": "cosine_warmup",  # its name key says cosine_restarts
    }
    assert "experiment" not in choices  # a diff over the others: only Hydra knows it
    assert choice_tags(choices)["head"] == "acrnn"
    assert default_run_name(cfg, choices) == "test_efficientnet-acrnn-label_smoothing-s42"


def _version(number: int, run_id: str, **tags: str) -> ModelVersion:
    return ModelVersion(
        "m", str(number), 0, run_id=run_id, tags=[ModelVersionTag(k, v) for k, v in tags.items()]
    )


def test_old_class_name_tags_map_to_options() -> None:
    smoothing = {"loss.criterion._target_": "torch.nn.CrossEntropyLoss"}
    smoothing["loss.criterion.label_smoothing"] = "0.1"
    assert legacy_option("loss", "CrossEntropyLoss", lambda: smoothing) == "label_smoothing"
    plain = {**smoothing, "loss.criterion.label_smoothing": "0.0"}
    assert legacy_option("loss", "CrossEntropyLoss", lambda: plain) == "cross_entropy"
    assert legacy_option("head", "ACRNNHead", lambda: pytest.fail("unambiguous")) == "acrnn"
    assert legacy_option("loss", "NoSuchLoss", dict) is None

    params = {"old": smoothing, "new": {}}
    ((old_query, keep_old),) = other_spellings({"loss": "label_smoothing"}, params.__getitem__)
    assert old_query == {"loss": "CrossEntropyLoss"}
    assert keep_old(_version(1, "old", loss="CrossEntropyLoss"))
    assert not keep_old(_version(2, "new", loss="CrossEntropyLoss", loss_class="x"))
    ((new_query, _),) = other_spellings({"head": "ACRNNHead", "seed": 1}, params.__getitem__)
    assert new_query == {"seed": 1, "head_class": "ACRNNHead"}
    assert other_spellings({"backbone": "b0"}, params.__getitem__) == []


def test_experiment_kind_is_set_on_new_and_existing_experiments(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
    chosen = client.create_experiment("chosen", artifact_location=(tmp_path / "b").as_uri())
    client.set_experiment_tag(chosen, EXPERIMENT_KIND_TAG, "genai_development")
    guessed = client.create_experiment("guessed", artifact_location=(tmp_path / "c").as_uri())
    client.set_experiment_tag(guessed, EXPERIMENT_KIND_TAG, "genai_development_inferred")
    for name in ("new", "old", "chosen", "guessed"):
        setup_experiment(uri, name, str(tmp_path / "mlruns"))
    kinds = {
        name: client.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG)
        for name in ("new", "old", "chosen", "guessed")
    }
    assert kinds == {
        "new": "custom_model_development",
        "old": "custom_model_development",
        "chosen": "genai_development",  # a kind someone chose is kept
        "guessed": "custom_model_development",
    }
