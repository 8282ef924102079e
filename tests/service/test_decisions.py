"""Selective prediction through the API: every answer carries a decision, and the odd inputs a
user really drops abstain with the input-quality reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import jpeg_part


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"image": ("odd.png", buffer.getvalue(), "image/png")}


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_every_answer_carries_a_decision(client, images: list[Path]) -> None:
    body = client.post("/predict", files=jpeg_part(images[0])).json()
    assert body["decision"] in ("predict", "abstain")
    assert isinstance(body["reasons"], list) and "abstention" in body
    assert (body["decision"] == "abstain") == bool(body["reasons"])


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (_noise((8, 8)), "input_too_small"),
        (_noise((4000, 30)), "extreme_aspect_ratio"),
        (Image.new("RGB", (200, 150), (128, 128, 128)), "nearly_uniform"),
        (_noise((200, 150)).convert("L").convert("RGB"), "not_colour"),
    ],
    ids=["8x8 thumbnail", "4000x30 strip", "flat grey", "greyscale photo"],
)
def test_odd_inputs_abstain_with_their_reason(client, image: Image.Image, reason: str) -> None:
    response = client.post("/predict", files=_png(image))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision"] == "abstain"
    assert reason in body["reasons"]


def test_model_card_shows_the_abstention_policy(client) -> None:
    card = client.get("/model").json()
    assert card["abstention"] is not None
    assert {"threshold", "source"} <= set(card["abstention"])
