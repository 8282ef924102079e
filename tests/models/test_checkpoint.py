"""The checkpoint schema: format version checked on load, older files migrated, newer refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from derm_exp.data.metadata import CLASSES
from derm_exp.inference.loading import load_classifier
from derm_exp.inference.members import member_from_checkpoint
from derm_exp.inference.sources import peek_checkpoint
from derm_exp.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_meta,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)
from derm_exp.models.classifier import build_model
from tests.conftest import compose_train

OPTIONS = ["experiment=demo", "model.head=acrnn", "loss=focal", "data.image_size=32"]


@pytest.fixture(scope="module")
def parts() -> tuple[dict, torch.nn.Module]:
    cfg = compose_train(OPTIONS)
    model = build_model(cfg.model, num_classes=len(CLASSES), image_size=32)
    return OmegaConf.to_container(cfg, resolve=True), model


def _best(config: dict, model: torch.nn.Module, **meta) -> dict:
    """A best checkpoint as the trainer writes it (``meta`` overrides the metadata)."""
    base = checkpoint_meta(
        config=config,
        choices={"experiment": "demo", "model": "tiny", "model/head": "acrnn", "loss": "focal"},
        classes=list(CLASSES),
        data_config=model.data_config,
        data_fingerprint="0123456789abcdef",
        run_id="a" * 32,
    )
    return {
        **base,
        "kind": "best",
        "model": model.state_dict(),
        "weights": "ema",
        "epoch": 3,
        "best": {"value": 0.4, "loss": 1.2, "weights": "ema", "epoch": 3, "degenerate": False},
        **meta,
    }


def _version_1(ck: dict) -> dict:
    """The same file as derm_exp wrote it before the version was checked."""
    old = {k: v for k, v in ck.items() if k not in ("kind", "choices")}
    old["format"] = "derm_exp.checkpoint/1"
    return old


def test_round_trip_keeps_every_field(parts, tmp_path: Path) -> None:
    config, model = parts
    ck = _best(config, model, temperature=1.7)
    loaded = load_checkpoint(save_checkpoint(ck, tmp_path / "checkpoint_best.pt"))
    assert loaded["format"] == FORMAT == f"derm_exp.checkpoint/{FORMAT_VERSION}"
    assert {k: v for k, v in loaded.items() if k != "model"} == {
        k: v for k, v in ck.items() if k != "model"
    }
    meta = checkpoint_metadata(loaded, tmp_path / "checkpoint_best.pt")
    assert meta.version == FORMAT_VERSION and meta.kind == "best"
    assert meta.choices["model/head"] == "acrnn" and meta.classes == list(CLASSES)
    assert (meta.run_id, meta.weights, meta.epoch, meta.temperature) == ("a" * 32, "ema", 3, 1.7)
    assert meta.monitor == "val/balanced_accuracy" and meta.best["value"] == 0.4
    net = load_classifier(tmp_path / "checkpoint_best.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in net.model.state_dict().items())


@pytest.mark.parametrize("without_format", [False, True], ids=["format-1", "no-format-key"])
def test_version_1_files_are_migrated_on_load(parts, tmp_path: Path, without_format) -> None:
    config, model = parts
    old = _version_1(_best(config, model))
    if without_format:
        del old["format"]
    path = save_checkpoint(old, tmp_path / "old.pt")
    ck = load_checkpoint(path)
    assert ck["format"] == FORMAT and ck["kind"] == "best"
    # The options are derived from the stored config, as for a run started without Hydra.
    assert {k: ck["choices"][k] for k in ("model", "model/head", "loss", "augment")} == {
        "model": "tiny",
        "model/head": "acrnn",
        "loss": "focal",
        "augment": "light",
    }
    assert "experiment" not in ck["choices"]  # only Hydra knows it
    # Every reader reads it: the classifier, ensemble members, model sources.
    assert load_classifier(path).classes == list(CLASSES)
    member = member_from_checkpoint(path)
    assert member.val_metrics == {"val_balanced_accuracy": 0.4} and member.run_id == "a" * 32
    assert peek_checkpoint(path)["run_id"] == "a" * 32
    # A version 1 latest checkpoint (it has an optimizer state) is migrated as a latest one.
    latest = save_checkpoint({**old, "optimizer": {}, "stage": 2}, tmp_path / "latest.pt")
    assert load_checkpoint(latest)["kind"] == "latest"


def test_stored_choices_of_a_version_1_file_are_kept(parts, tmp_path: Path) -> None:
    config, model = parts
    old = {**_version_1(_best(config, model)), "choices": {"model": "tiny", "experiment": "demo"}}
    ck = load_checkpoint(save_checkpoint(old, tmp_path / "old.pt"))
    assert ck["choices"] == {"model": "tiny", "experiment": "demo"}


def test_a_newer_format_is_refused_clearly(parts, tmp_path: Path) -> None:
    config, model = parts
    newer = f"derm_exp.checkpoint/{FORMAT_VERSION + 1}"
    path = save_checkpoint(_best(config, model, format=newer), tmp_path / "new.pt")
    message = rf"written by a newer derm_exp \(format {FORMAT_VERSION + 1}.*upgrade derm_exp"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(path)
    with pytest.raises(CheckpointError, match=message):
        member_from_checkpoint(path)
    assert peek_checkpoint(path) == {}  # the model's own loading then says why


def test_another_format_is_not_a_derm_exp_checkpoint(parts, tmp_path: Path) -> None:
    config, model = parts
    path = save_checkpoint(_best(config, model, format="other.tool/7"), tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a derm_exp checkpoint .format 'other.tool/7'"):
        load_checkpoint(path)


def test_a_plain_state_dict_is_refused_by_every_reader(parts, tmp_path: Path) -> None:
    _, model = parts
    path = save_checkpoint(model.state_dict(), tmp_path / "weights.pt")
    assert set(load_checkpoint(path)) == set(model.state_dict())  # file I/O: as stored
    expected = r"not a derm_exp checkpoint \(missing config, classes, data_config"
    with pytest.raises(CheckpointError, match=expected):
        checkpoint_metadata(load_checkpoint(path), path)
    with pytest.raises(CheckpointError, match=expected):
        load_classifier(path)
    with pytest.raises(CheckpointError, match=expected):
        member_from_checkpoint(path)


def test_version_1_history_gets_one_value_per_epoch_in_every_list(parts, tmp_path: Path) -> None:
    """Version 1 logged the other weights' loss only on epochs where they were not selected."""
    config, model = parts
    history = {
        "epoch": [1.0, 2.0, 3.0],
        "val/uses_ema": [0.0, 1.0, 0.0],
        "val/loss": [1.0, 0.9, 0.8],
        "val_raw/loss": [0.95],  # epoch 2 only (EMA selected)
        "val_ema/loss": [1.1, 0.85],  # epochs 1 and 3
        "val_raw/balanced_accuracy": [0.2, 0.3, 0.4],  # already complete
    }
    old = {**_version_1(_best(config, model)), "history": history, "optimizer": {}}
    ck = load_checkpoint(save_checkpoint(old, tmp_path / "latest.pt"))
    assert ck["history"]["val_raw/loss"] == [1.0, 0.95, 0.8]
    assert ck["history"]["val_ema/loss"] == [1.1, 0.9, 0.85]
    assert ck["history"]["val_raw/balanced_accuracy"] == [0.2, 0.3, 0.4]
    assert {len(v) for v in ck["history"].values()} == {3}
