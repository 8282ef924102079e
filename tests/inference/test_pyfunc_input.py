"""The registered model's inputs: paths, bytes, base64 and data URIs ("paths, bytes or base64",
README "Model registry and ensembles"), on a model of the demo experiment loaded the user's way:
``mlflow.pyfunc.load_model("models:/derm-classifier@seed-1")``."""

from __future__ import annotations

import base64
import io
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from derm_exp.errors import PredictionInputError
from derm_exp.inference.pyfunc_model import images_from_input
from tests.inference.conftest import DemoSweep


def _jpeg(seed: int = 0, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_every_encoding_decodes_to_the_same_pixels(tmp_path) -> None:
    raw = _jpeg()
    path = tmp_path / "a.jpg"
    path.write_bytes(raw)
    b64 = base64.b64encode(raw).decode()
    cells = [
        str(path),
        path,
        raw,
        bytearray(raw),
        b64,
        b64.encode(),  # base64 as ASCII bytes
        base64.encodebytes(raw).decode(),  # MIME: line breaks every 76 characters
        base64.urlsafe_b64encode(raw).decode().rstrip("="),  # URL-safe, unpadded
        f"data:image/jpeg;base64,{b64}",
        f"  DATA:image/jpeg;base64,{b64}\n",
        f"data:image/jpeg;base64,{b64}".encode(),
    ]
    decoded = images_from_input(pd.DataFrame({"image": cells}))
    expected = np.asarray(Image.open(path).convert("RGB"))
    for cell, image in zip(cells, decoded, strict=True):
        pixels = np.asarray(Image.open(image).convert("RGB") if isinstance(image, str) else image)
        np.testing.assert_array_equal(pixels, expected, err_msg=repr(cell)[:60])


def test_a_cell_that_is_no_image_is_a_clear_error(tmp_path) -> None:
    not_an_image = base64.b64encode(b"hello, world").decode()
    for cell, message in (
        ("/no/such/image.jpg", r"image 1: '/no/such/image.jpg' is neither an existing file nor "),
        # a file name over NAME_MAX: Path.is_file() raised OSError "File name too long"
        (f"/data/{'n' * 300}.jpg", "is neither an existing file nor base64"),
        (not_an_image, "not an existing file, and as base64 it is not a readable image"),
        ("data:image/png;base64,@@@", "payload of data URI 'data:image/png;base64' is not valid"),
        ("data:image/png;base64", "has no ',' payload"),
        (f"data:image/png;base64,{not_an_image}", "data URI .* is not a readable image"),
        (b"\xff\xd8 truncated", "12 bytes is not a readable image"),
        (None, "image 1: empty cell"),
        (3, "unsupported type int"),
    ):
        with pytest.raises(PredictionInputError, match=message):
            images_from_input([_jpeg(), cell])


@pytest.mark.slow
def test_registered_demo_model_predicts_base64_and_data_uris(demo_sweep: DemoSweep) -> None:
    mlflow.set_tracking_uri(demo_sweep.uri)
    model = mlflow.pyfunc.load_model("models:/derm-classifier@seed-1")
    paths = [str(p) for p in demo_sweep.images[:3]]
    raw = [p.read_bytes() for p in demo_sweep.images[:3]]
    b64 = [base64.b64encode(b).decode() for b in raw]
    # The demo's 200x150 JPEGs give base64 strings longer than any file name (PATH_MAX 4096):
    # Path(...).is_file() raised "OSError: [Errno 36] File name too long" on them.
    assert min(map(len, b64)) > os.pathconf("/", "PC_PATH_MAX")

    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    predicted = model.predict(pd.DataFrame({"image": paths}))
    assert list(predicted.columns) == [*classes, "decision", "reasons"]  # selective prediction
    expected = predicted[classes]
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)
    for cells in (
        b64,
        [f"data:image/jpeg;base64,{s}" for s in b64],
        raw,
        [b64[0], f"data:image/jpeg;base64,{b64[1]}", paths[2]],  # mixed in one frame
    ):
        out = model.predict(pd.DataFrame({"image": cells}))
        np.testing.assert_allclose(out[classes].to_numpy(), expected.to_numpy(), atol=1e-6)
        assert list(out["decision"]) == list(predicted["decision"])
        assert out.attrs["disclaimer"] == expected.attrs["disclaimer"]
    with pytest.raises(PredictionInputError, match="image 1: 'lesion.jpg' is neither"):
        model.predict(pd.DataFrame({"image": [b64[0], "lesion.jpg"]}))
