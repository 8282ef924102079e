"""Uploads prepared outside the model thread give the answers of the Python API."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from derm_exp.service.limits import Limits
from derm_exp.service.preparing import predict_prepared, prepare


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_prepared_batches_answer_like_predict_batch(loaded, images: list[Path]) -> None:
    uploads = [p.read_bytes() for p in images[:3]] + [_png(Image.new("RGB", (64, 48), "grey"))]
    prepared = [prepare(loaded, data, Limits()) for data in uploads]
    assert all(p.tensor is not None and p.quality is not None for p in prepared)
    assert prepared[-1].quality  # the grey image fails the input-quality gate
    decoded = [p.image for p in prepared]
    for tta in ("none", "light"):
        got = predict_prepared(loaded, prepared, tta)
        want = loaded.model.predict_batch(decoded, tta=None if tta == "none" else tta)
        assert [g["decision"] for g in got] == [w["decision"] for w in want]
        assert [g["reasons"] for g in got] == [w["reasons"] for w in want]
        assert got[-1]["decision"] == "abstain"
        for g, w in zip(got, want, strict=True):
            classes = loaded.model.classes
            np.testing.assert_allclose(
                [g["probabilities"][c] for c in classes],
                [w["probabilities"][c] for c in classes],
                atol=1e-6,
            )
            assert g.get("view_std") == w.get("view_std")
