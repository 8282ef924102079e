"""Every setting is checked before the first epoch, also those first read after the last one
(test-time augmentation, bootstrap resamples, the registered model name)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from derm_exp.config import PROJECT_ROOT
from derm_exp.inference.view_names import VIEW_NAMES
from derm_exp.models.classifier import build_model
from derm_exp.training.validate import ConfigError, validate_config, validate_model
from tests.conftest import compose_train


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tta.aggregation=median"], "tta.aggregation='median': choose one of mean, geometric"),
        (["tta.views=[identity,bogus]"], "tta.views: unknown view(s) bogus; choose from identity"),
        (["tta.views=[]"], "tta.views: no view; choose from identity"),
        (["evaluation.n_boot=-1"], "evaluation.n_boot=-1 must be >= 0"),
        (["evaluation.n_boot=many"], "evaluation.n_boot='many' must be an integer"),
        (["registry.name=derm/classifier"], "registry.name='derm/classifier': a non-empty name"),
        (["evaluation.subgroups.min_lesions=0"], "evaluation.subgroups.min_lesions=0: a whole"),
    ],
    ids=["aggregation", "views", "no_views", "n_boot", "n_boot_text", "registry_name", "subgroups"],
)
def test_end_of_run_settings_are_checked_up_front(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        validate_config(compose_train(["experiment=demo", *overrides]))
    assert message in str(info.value)


def test_a_registry_name_is_not_checked_when_nothing_is_registered() -> None:
    validate_config(compose_train(["registry.enabled=false", "registry.name=a/b"]))


def test_the_view_names_are_the_views_of_tta() -> None:
    from derm_exp.inference.tta import VIEWS

    assert tuple(VIEWS) == VIEW_NAMES


def test_90_degree_views_need_a_square_input() -> None:
    cfg = compose_train(["model=tiny", "data.image_size=32", "tta=medium"])
    model = build_model(cfg.model, 7, image_size=32)
    validate_model(cfg, model)
    model.data_config["input_size"] = (3, 32, 48)
    model.data_config["crop_mode"] = "squash"  # a centre crop needs a square input itself
    with pytest.raises(ConfigError, match="tta.views rot270, rot90, transpose, transverse need"):
        validate_model(cfg, model)
    validate_model(compose_train(["model=tiny", "data.image_size=32", "tta=light"]), model)


def test_fit_refuses_a_bad_tta_setting_before_any_epoch(
    tiny_cfg: DictConfig, tmp_path: Path
) -> None:
    from derm_exp.training.trainer import fit

    with open_dict(tiny_cfg):
        tiny_cfg.tta.aggregation = "median"
    with pytest.raises(ConfigError, match="tta.aggregation='median'"):
        fit(tiny_cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tta.aggregation=median", "tta.aggregation='median': choose one of"),
        ("tta.views=[bogus]", "tta.views: unknown view(s) bogus"),
    ],
)
def test_train_cli_reports_a_bad_tta_setting_before_training(
    tmp_path: Path, override: str, message: str
) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "derm_exp.train",
            "experiment=demo",
            override,
            f"data.demo.dir={tmp_path / 'demo'}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("error: invalid configuration") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "epoch 1/" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out" / "splits").exists()
