"""Models for the explanation tests: a tiny classifier trained a few steps on a toy task whose
answer is where a bright square sits, so its maps are not those of a random network."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from omegaconf import OmegaConf

from derm_exp.config import PROJECT_ROOT
from derm_exp.models.classifier import SkinLesionClassifier, build_model
from tests.inference.conftest import trained_model  # noqa: F401 - shared session fixture

TOY_SIZE = 64
TOY_CLASSES = 4  # square in the top-left, top-right, bottom-left or bottom-right quadrant


def make_model(name: str = "test_efficientnet", head: str = "simple", classes: int = 7):
    """A random-init classifier of timm backbone ``name`` with head conf/model/head/<head>."""
    head_cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "head" / f"{head}.yaml")
    cfg = OmegaConf.create({"name": name, "pretrained": False, "head": head_cfg})
    return build_model(cfg, classes, TOY_SIZE)


def toy_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 64, 64) noise images with a bright 16 px square in the quadrant of their label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % TOY_CLASSES
    x = 0.3 * torch.randn(n, 3, TOY_SIZE, TOY_SIZE, generator=g)
    for i, label in enumerate(labels.tolist()):
        top, left = 8 + 32 * (label // 2), 8 + 32 * (label % 2)
        x[i, :, top : top + 16, left : left + 16] += 2.5
    return x, labels


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than on several of a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def train_toy(model: SkinLesionClassifier, steps: int = 60, seed: int = 0) -> SkinLesionClassifier:
    """A few Adam steps on :func:`toy_batch` data; returns the model in eval mode."""
    with one_thread():
        return _train(model, steps, seed)


def _train(model: SkinLesionClassifier, steps: int, seed: int) -> SkinLesionClassifier:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        x, y = toy_batch(32, seed=1000 + step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="session")
def toy_model() -> SkinLesionClassifier:
    """test_efficientnet + simple head, trained on the toy task."""
    return train_toy(make_model(classes=TOY_CLASSES))


@pytest.fixture(scope="session")
def toy_acrnn() -> SkinLesionClassifier:
    """test_efficientnet + acrnn head, trained on the toy task."""
    return train_toy(make_model(head="acrnn", classes=TOY_CLASSES))
