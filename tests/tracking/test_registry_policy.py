"""What an alias means (seed-<n> = best on validation, latest-seed-<n> = newest) and when a
finished run is trained again."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict

from derm_exp.training.resume import stop_reason
from derm_exp.training.seed_aliases import best_for_seed
from tests.conftest import compose_train

BASE = {"monitor": "val/balanced_accuracy", "monitor_mode": "max", "data_fingerprint": "f"}


def _tags(value: float, loss: float = 1.0, **extra: str) -> dict[str, str]:
    return {**BASE, "val_balanced_accuracy": repr(value), "val_loss": repr(loss), **extra}


def test_seed_alias_moves_only_to_a_better_version() -> None:
    assert best_for_seed(_tags(0.4), [_tags(0.3)]) is None  # the new one is better
    assert best_for_seed(_tags(0.2), [_tags(0.3)]) == 0
    assert best_for_seed(_tags(0.2), [_tags(0.1), _tags(0.3), _tags(0.25)]) == 1  # best of all
    assert best_for_seed(_tags(0.3, loss=0.9), [_tags(0.3, loss=1.0)]) is None  # tie: lower loss
    assert best_for_seed(_tags(0.3), [_tags(0.3)]) == 0  # full tie: the older one keeps it
    # a degenerate model never beats one that is not, whatever the metric
    assert best_for_seed(_tags(0.9, degenerate="true"), [_tags(0.2, degenerate="false")]) == 0
    assert best_for_seed(_tags(0.1), [_tags(0.5, degenerate="true")]) is None
    # monitor_mode=min (e.g. trainer.monitor=val/loss)
    low = {**BASE, "monitor": "val/loss", "monitor_mode": "min", "val_loss": "0.8"}
    assert best_for_seed(low, [{**low, "val_loss": "0.9"}]) is None
    assert best_for_seed({**low, "val_loss": "1.0"}, [{**low, "val_loss": "0.9"}]) == 0
    # versions validated on another split, or without the metric, do not compete
    assert best_for_seed(_tags(0.1), [_tags(0.5, data_fingerprint="other"), {**BASE}]) is None


def test_stop_reason_names_the_limit_to_raise() -> None:
    cfg = OmegaConf.create(
        {"trainer": {"max_epochs": 4, "early_stopping_patience": 3, "max_time_minutes": None}}
    )
    done = {"epoch": 3, "stale_epochs": 0, "elapsed": 10.0}
    assert stop_reason(done, cfg) == (
        "it trained all trainer.max_epochs=4 epochs",
        "trainer.max_epochs=9",
    )
    cfg.trainer.max_epochs = 10
    assert stop_reason(done, cfg) is None  # a raised max_epochs continues it
    assert "early_stopping_patience=8" in stop_reason({**done, "stale_epochs": 3}, cfg)[1]
    cfg.trainer.max_time_minutes = 0.1  # 6 s: 10 s for 4 epochs, one more would exceed it
    assert stop_reason(done, cfg)[1] == "trainer.max_time_minutes=0.2"


def _demo_cfg(tmp_path: Path, *overrides: str):
    cfg = compose_train(
        [
            "experiment=demo",
            "evaluation.n_boot=0",
            "data.num_workers=0",
            "device=cpu",
            "explain.gallery=false",  # not what these tests are about
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.data.demo.dir = str(tmp_path / "demo")
        cfg.tracking.uri = f"sqlite:///{tmp_path}/mlflow.db"
        cfg.tracking.artifact_root = str(tmp_path / "mlruns")
    return cfg


@pytest.mark.slow
def test_worse_rerun_of_a_seed_moves_latest_but_not_seed_alias(tmp_path: Path) -> None:
    from derm_exp.training.trainer import fit

    first = _demo_cfg(tmp_path, "trainer.max_epochs=2")
    fit(first, tmp_path / "first")
    # Same seed, one epoch: predicts one class. Registered only because it is allowed to be.
    second = _demo_cfg(tmp_path, "trainer.max_epochs=1", "registry.allow_degenerate=true")
    fit(second, tmp_path / "second")
    mlflow.set_tracking_uri(first.tracking.uri)
    client = MlflowClient()
    v1, v2 = (client.get_model_version("derm-classifier", str(v)) for v in (1, 2))
    assert v1.tags["degenerate"] == "false" and v2.tags["degenerate"] == "true"

    def holder(alias: str) -> str:
        return str(client.get_model_version_by_alias("derm-classifier", alias).version)

    assert holder("seed-42") == "1" and holder("latest-seed-42") == "2"
