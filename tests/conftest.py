"""Shared fixtures: composed tiny configs, a generated dataset and the README's demo training
runs (plain, and with options typed), all under tmp dirs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests (and the CLIs they start) never write the project's decoded-image cache.
os.environ["DERM_EXP_CACHE_DIR"] = tempfile.mkdtemp(prefix="derm_exp_test_cache_")

from derm_exp.config import CONF_DIR, normalize_overrides  # noqa: E402
from tests.demo_run import DemoRun, train_demo_run  # noqa: E402
from tests.options_run import OptionsRun, train_options_run  # noqa: E402
from tests.tiny import tiny  # noqa: E402
from tests.worker_groups import assign_groups, worker_count  # noqa: E402


def compose_train(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides (dotted group form accepted)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=normalize_overrides(overrides or []))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated HAM10000-format dataset shared by the session's tests."""
    from derm_exp.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo_data")
    generate_demo_dataset(root, n_images=240, seed=3, size=(64, 48))
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The README's demo training run through the CLI, once per session (tests/demo_run.py)."""
    return train_demo_run(tmp_path_factory.mktemp("demo_run"))


@pytest.fixture(scope="session")
def options_run(tmp_path_factory: pytest.TempPathFactory) -> OptionsRun:
    """The README's training command with options typed, and its resumption, once per session
    (tests/options_run.py)."""
    return train_options_run(tmp_path_factory.mktemp("options_run"))


@pytest.fixture
def tiny_cfg(tmp_path: Path, demo_data: Path) -> DictConfig:
    """A 2-epoch, 32 px, CPU training config logging to a tmp MLflow store."""
    cfg = compose_train(tiny("trainer.max_epochs=2", "tta=light", "evaluation.n_boot=50"))
    with open_dict(cfg):
        cfg.data.root = str(demo_data)
        cfg.tracking.uri = f"sqlite:///{tmp_path}/mlflow.db"
        cfg.tracking.artifact_root = str(tmp_path / "mlruns")
    return cfg


@pytest.hookimpl(tryfirst=True)  # before xdist turns the marks into its groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (``make test``), group the tests (tests/worker_groups.py)."""
    if config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") == "loadgroup":
        assign_groups(items)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; plain pytest has no such hook
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: tests/worker_groups.py's worker count."""
    return worker_count()
