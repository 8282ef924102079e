"""Fusion modules: every method with both heads, "no metadata" = the missing vector, metadata
dropout, and, measured on a synthetic task, that fusion uses the metadata and that a model
trained with metadata dropout still classifies at image-only level when metadata is withheld."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from derm_exp.data.metadata_encoding import MetadataEncoder
from derm_exp.errors import ConfigError
from derm_exp.models.classifier import build_model
from tests.conftest import compose_train

ENCODER = MetadataEncoder.fit(
    pd.DataFrame({"age": [30, 50], "sex": ["male", "female"], "localization": ["back", "face"]}),
    ["age", "sex", "localization"],
)


def model_for(method: str, head: str = "simple", backbone: str = "tiny", num_classes: int = 7):
    overrides = [f"model={backbone}", f"model.head={head}", f"model.metadata={method}"]
    cfg = compose_train(overrides).model
    encoder = ENCODER if method != "none" else None
    return build_model(cfg, num_classes, image_size=32, metadata_encoder=encoder)


@pytest.mark.parametrize("head", ["simple", "acrnn"])
@pytest.mark.parametrize("method", ["concat", "film"])
def test_fusion_with_each_head_uses_the_metadata(method: str, head: str) -> None:
    torch.manual_seed(0)
    model = model_for(method, head).eval()
    if method == "film":  # FiLM starts as the identity: give it a non-zero last layer
        torch.nn.init.normal_(model.fusion.mlp[-1].weight, std=0.5)
    x = torch.randn(3, 3, 32, 32)
    a = torch.from_numpy(ENCODER.encode_records([{"age": 80, "sex": "male"}] * 3))
    b = torch.from_numpy(ENCODER.encode_records([{"localization": "face", "age": 10}] * 3))
    with torch.no_grad():
        out_a, out_b, out_none = model(x, a), model(x, b), model(x)
        missing = torch.from_numpy(ENCODER.encode_records([None] * 3))
        out_missing = model(x, missing)
    assert out_a.shape == (3, 7)
    assert not torch.allclose(out_a, out_b)
    torch.testing.assert_close(out_none, out_missing)  # no metadata = nothing known


@pytest.mark.parametrize("backbone", ["resnet10t", "efficientnet_lite0"])
def test_fusion_fits_other_backbones(backbone: str) -> None:
    model = model_for("concat", backbone=backbone).eval()
    meta = torch.from_numpy(ENCODER.encode_records([{"age": 40}] * 2))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32), meta).shape == (2, 7)
    assert model.fusion.out_channels == model.num_features + 32


def test_film_starts_as_the_identity_and_image_only_ignores_metadata() -> None:
    model = model_for("film").eval()
    x = torch.randn(2, 3, 32, 32)
    meta = torch.from_numpy(ENCODER.encode_records([{"age": 80}, {"sex": "female"}]))
    with torch.no_grad():
        torch.testing.assert_close(model(x, meta), model(x))
        plain = model_for("none").eval()
        torch.testing.assert_close(plain(x, meta), plain(x))
    assert plain.fusion is None


def test_metadata_dropout_replaces_whole_rows_in_training_only() -> None:
    model = model_for("concat")
    model.fusion.dropout = 0.5
    feats = torch.zeros(400, 4, 1, 1)
    meta = torch.from_numpy(ENCODER.encode_records([{"age": 70, "sex": "male"}] * 400))
    model.train()
    torch.manual_seed(0)
    dropped = (model.fusion.prepare(meta, feats) == model.fusion.missing).all(1)
    assert 150 < int(dropped.sum()) < 250  # about half, each row all-or-nothing
    model.eval()
    torch.testing.assert_close(model.fusion.prepare(meta, feats), meta)


def test_a_metadata_model_needs_its_encoder_and_valid_settings() -> None:
    cfg = compose_train(["model=tiny", "model.metadata=concat"]).model
    with pytest.raises(ConfigError, match="encoder"):
        build_model(cfg, 7, image_size=32)
    cfg.metadata.dropout = 1.5
    with pytest.raises(ConfigError, match="dropout"):
        build_model(cfg, 7, image_size=32, metadata_encoder=ENCODER)


# --- a synthetic task: the image gives one bit of the label, the metadata the other ----------

TASK_ENCODER = MetadataEncoder.fit(pd.DataFrame({"sex": ["male", "female"]}), ["sex"])


def task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 classes: label = 2 * (bright image) + (female). Image-only accuracy is at most 50 %."""
    g = torch.Generator().manual_seed(seed)
    bright, female = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    images = torch.randn(n, 3, 16, 16, generator=g) * 0.3 + (bright * 2 - 1).view(-1, 1, 1, 1)
    sex = ["female" if f else "male" for f in female.tolist()]
    meta = torch.from_numpy(TASK_ENCODER.encode_records([{"sex": s} for s in sex]))
    return images, meta, bright * 2 + female


# Epochs to learn the task (measured: concat's few extra channels need more steps than FiLM's
# gating; 256 images, batches of 32).
EPOCHS = {"none": 2, "film": 2, "concat": 8}


def train_on_task(method: str, dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = compose_train(["model=tiny", f"model.metadata={method}"]).model
    if method != "none":
        cfg.metadata.dropout = dropout
    enc = TASK_ENCODER if method != "none" else None
    model = build_model(cfg, 4, image_size=16, metadata_encoder=enc)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, meta, labels = task(256, seed=1)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is faster, above all on a busy machine
    try:
        for _ in range(EPOCHS[method]):
            for i in range(0, 256, 32):
                logits = model(images[i : i + 32], meta[i : i + 32])
                loss = torch.nn.functional.cross_entropy(logits, labels[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def image_only_accuracy() -> float:
    return accuracy(train_on_task("none", 0.0), with_metadata=False)


@torch.no_grad()
def accuracy(model: torch.nn.Module, with_metadata: bool) -> float:
    images, meta, labels = task(400, seed=2)
    logits = model(images, meta if with_metadata else None)
    return float((logits.argmax(1) == labels).float().mean())


@pytest.mark.parametrize("method", ["concat", "film"])
def test_fusion_uses_metadata_and_works_without_it_after_metadata_dropout(
    method: str, image_only_accuracy: float
) -> None:
    image_only = image_only_accuracy
    fused = train_on_task(method, dropout=0.3)
    with_meta, withheld = accuracy(fused, True), accuracy(fused, False)
    assert image_only < 0.6  # the image alone gives one bit of two
    assert with_meta > 0.9  # fusion reads the other bit from the metadata
    # Without metadata the model falls back to about the image-only level (0.5), not below.
    assert withheld > image_only - 0.1, (with_meta, withheld, image_only)
