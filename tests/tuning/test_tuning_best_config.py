"""The best trial as a reproducible experiment file."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from derm_exp.tuning.best_config import best_experiment_yaml, write_best_config
from tests.conftest import compose_train

TRIAL = [
    "hparams_search=optuna",  # sweep-only: dropped
    "experiment=demo",
    "model=tiny",
    "model.head=acrnn",  # dotted group form
    "loss=focal",
    "optimizer.lr=0.002",
    "data.sampler=weighted",
    "data.root=/data/HAM10000",
    "~registry.name",  # cannot be expressed as a diff: listed in a comment
]


def test_yaml_is_a_global_experiment_diff() -> None:
    text = best_experiment_yaml(TRIAL, header=["Best trial 3"])
    lines = text.splitlines()
    assert lines[0] == "# @package _global_"
    assert "# Best trial 3" in lines
    assert any("~registry.name" in line for line in lines if line.startswith("#"))
    body = OmegaConf.create(text)
    assert OmegaConf.to_container(body.defaults) == [
        "/experiment/demo",
        {"override /model": "tiny"},
        {"override /model/head": "acrnn"},
        {"override /loss": "focal"},
        "_self_",
    ]
    assert body.optimizer.lr == 0.002
    assert body.data == {"sampler": "weighted", "root": "/data/HAM10000"}
    assert "hparams_search" not in body


def test_written_file_composes_as_an_experiment(tmp_path: Path) -> None:
    path = write_best_config(
        tmp_path / "conf" / "experiment" / "best_t.yaml", best_experiment_yaml(TRIAL[:-1])
    )
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    cfg = compose_train(["experiment=best_t", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"])
    assert cfg.model.name == "test_efficientnet"
    assert cfg.model.head._target_.endswith("ACRNNHead")
    assert cfg.loss.criterion._target_.endswith("FocalLoss")
    assert cfg.optimizer.lr == 0.002
    assert cfg.data.sampler == "weighted"
    assert cfg.data.root == "/data/HAM10000"
    assert cfg.data.image_size == 64


def test_an_experiment_after_group_overrides_still_composes(tmp_path: Path) -> None:
    """The sweeper lists a search config's fixed params before the command line, so
    ``experiment=demo`` comes after ``scheduler=none``; Hydra refuses a defaults list with an
    override before a plain entry ("Overrides must be at the end of the defaults list")."""
    trial = ["scheduler=none", "hparams_search=optuna_smoke", "experiment=demo", "model=resnet10t"]
    text = best_experiment_yaml([*trial, "trainer.max_epochs=2", "optimizer.lr=0.01"])
    assert OmegaConf.to_container(OmegaConf.create(text).defaults) == [
        "/experiment/demo",
        {"override /scheduler": "none"},
        {"override /model": "resnet10t"},
        "_self_",
    ]
    write_best_config(tmp_path / "conf" / "experiment" / "best_t.yaml", text)
    cfg = compose_train(["experiment=best_t", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"])
    # as on the command line: the trial's choices and values beat the included experiment's
    assert cfg.scheduler.name == "none"
    assert cfg.model.name == "resnet10t"  # demo's own `override /model: tiny` loses
    assert cfg.trainer.max_epochs == 2 and cfg.optimizer.lr == 0.01  # demo sets 6 and 3e-3
    assert cfg.data.image_size == 64  # the rest of experiment=demo is kept
