"""Shared by the evaluation CLI tests: the session's tiny trained model and an in-process
``derm_exp.evaluate`` call on its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_train
from tests.inference.conftest import TrainedModel, session_model


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The tiny model of tests/inference/conftest.py (trained once per session)."""
    return session_model(tmp_path_factory, demo_data)


def evaluate_checkpoint(model: TrainedModel, out: Path, *overrides: str, n_boot: int = 100) -> dict:
    """``evaluate`` on the model's checkpoint, no tracking, CPU, ``n_boot`` resamples."""
    from derm_exp.evaluate import evaluate

    cfg = compose_train(
        [
            f"model_ref={model.checkpoint}",
            "tracking.enabled=false",
            "data.num_workers=0",
            "device=cpu",
            f"bootstrap.n_boot={n_boot}",
            *overrides,
        ],
        config_name="evaluate",
    )
    return evaluate(cfg, out)
