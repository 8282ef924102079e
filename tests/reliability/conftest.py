"""Fixtures for the reliability tests: a small generated dataset and tiny configs."""

from __future__ import annotations

import io
import logging
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, open_dict
from PIL import Image

from tests.conftest import compose_train
from tests.reliability.helpers import TINY


@pytest.fixture(scope="session")
def rel_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 generated images (64x48) in HAM10000 layout, shared read-only by the session."""
    from derm_exp.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp("rel_data") / "data"
    return generate_demo_dataset(root, n_images=120, seed=0, size=(64, 48))


@pytest.fixture
def data_copy(rel_data: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`rel_data` that a test may damage."""
    return Path(shutil.copytree(rel_data, tmp_path / "data"))


def _new_store(path: Path) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables (seconds)
    return uri


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite MLflow store for the in-process tests (one experiment per test): creating a
    store's tables takes seconds."""
    return _new_store(tmp_path_factory.mktemp("store") / "mlflow.db")


@pytest.fixture(scope="session")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store, copied into place for subprocess runs."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    _new_store(path)
    return path


@pytest.fixture
def rel_cfg(
    tmp_path: Path, rel_data: Path, shared_store: str, request: pytest.FixtureRequest
) -> DictConfig:
    """In-process config: 2 epochs, 32 px, CPU, registry off; the test's own experiment in the
    shared store, artifacts under tmp_path."""
    cfg = compose_train([*TINY, "trainer.max_epochs=2"])
    with open_dict(cfg):
        cfg.data.root = str(rel_data)
        cfg.tracking.uri = shared_store
        cfg.tracking.experiment_name = "rel-" + re.sub(r"\W+", "-", request.node.name)
        cfg.tracking.artifact_root = str(tmp_path / "mlruns")
        cfg.data.cache_dir = str(tmp_path / "cache")
    return cfg


SECRET = "hunter2"


def bomb_png(path: Path, width: int = 20_000, height: int = 20_000) -> Path:
    """A 60-byte PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb
    for PIL, refused at open without allocating anything)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def damage_dataset(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Replace some images of ``root`` by unreadable files and others by awkward but valid
    formats (same image ids). Returns (bad, odd): kind -> path."""
    images = sorted((root / "images").glob("*.jpg"))
    bad_targets, odd_targets = images[:4], images[4:10]
    for p in bad_targets + odd_targets:
        p.unlink()
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    rgb.save(buf, "JPEG")
    bad = {
        "zero_byte": bad_targets[0],
        "truncated": bad_targets[1],
        "text": bad_targets[2],
        "bomb": bad_targets[3].with_suffix(".png"),
    }
    bad["zero_byte"].write_bytes(b"")
    bad["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad["text"].write_text("lesion_id,image_id\nthis is not an image\n")
    bomb_png(bad["bomb"])
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 64x48 on disk -> 48x64
    odd = {
        "grayscale": odd_targets[0],
        "rgba": odd_targets[1].with_suffix(".png"),
        "cmyk": odd_targets[2],
        "uint16": odd_targets[3].with_suffix(".png"),
        "exif_rotated": odd_targets[4],
        "palette": odd_targets[5].with_suffix(".png"),
    }
    rgb.convert("L").save(odd["grayscale"])
    rgb.convert("RGBA").save(odd["rgba"])
    rgb.convert("CMYK").save(odd["cmyk"])
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(odd["uint16"])
    rgb.save(odd["exif_rotated"], exif=exif)
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(odd["palette"])
    return bad, odd


@dataclass
class DamagedRun:
    """A finished 2-epoch run on a damaged dataset, with secrets planted in its config."""

    cfg: DictConfig
    output_dir: Path
    run_id: str
    bad: dict[str, Path]
    odd: dict[str, Path]
    log_text: str


@pytest.fixture(scope="session")
def damaged_run(
    tmp_path_factory: pytest.TempPathFactory, rel_data: Path, shared_store: str
) -> DamagedRun:
    """Train once on a copy of :func:`rel_data` with unreadable and awkward images; the config
    also carries a password in a URI and a token, which must never be persisted or logged."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from derm_exp.training.trainer import fit

    base = tmp_path_factory.mktemp("damaged")
    root = Path(shutil.copytree(rel_data, base / "data"))
    bad, odd = damage_dataset(root)
    # with the end-of-run gallery (off in TINY): it also reads the damaged test images
    cfg = compose_train([*TINY, "trainer.max_epochs=2", "explain.gallery=true"])
    with open_dict(cfg):
        cfg.data.root = str(root)
        cfg.data.mirror = f"https://alice:{SECRET}@example.org/ham10000.zip"
        cfg.tracking.api_token = f"{SECRET}-token"
        cfg.tracking.uri = shared_store
        cfg.tracking.experiment_name = "rel-damaged"
        cfg.tracking.artifact_root = str(base / "mlruns")
        cfg.data.cache_dir = str(base / "cache")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.setLevel(logging.INFO)
    root_logger.addHandler(handler)
    try:
        fit(cfg, base / "out")
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([exp.experiment_id])
    return DamagedRun(cfg, base / "out", run.info.run_id, bad, odd, stream.getvalue())
