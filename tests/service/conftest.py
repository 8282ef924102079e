"""Fixtures of the service tests: the session's tiny trained model, served in-process."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.inference.conftest import TrainedModel, session_model


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> TrainedModel:
    """The 1-epoch 32 px model the inference tests share (trained on first use)."""
    return session_model(tmp_path_factory, demo_data)


@pytest.fixture(scope="session")
def loaded(served_model: TrainedModel):
    from derm_exp.inference.prediction_model import load_prediction_model

    return load_prediction_model(
        [str(served_model.checkpoint)], device="cpu", tracking_uri=served_model.tracking_uri
    )


@pytest.fixture(scope="module")
def client(loaded) -> Iterator[TestClient]:
    from derm_exp.service.app import create_app

    with TestClient(create_app(loaded)) as c:
        yield c


@pytest.fixture(scope="session")
def images(demo_data: Path) -> list[Path]:
    return sorted((demo_data / "images").glob("*.jpg"))


def jpeg_part(path: Path, name: str | None = None) -> dict:
    """The ``files=`` argument of one JPEG upload."""
    return {"image": (name or path.name, path.read_bytes(), "image/jpeg")}


def png_bomb(side: int = 16_000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` black pixels: ~30 kB that decode to
    ``side**2`` pixels (256 M for the default: 768 MB as RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1 bit, grey
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(chunk(b"IHDR", header))
    out.write(chunk(b"IDAT", data))
    out.write(chunk(b"IEND", b""))
    return out.getvalue()
