"""Synthetic demo generator: HAM10000 format, counts, determinism, learnable signal, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from derm_exp.data.errors import DataValidationError
from derm_exp.data.metadata import CLASSES, load_metadata
from derm_exp.data.splits import split_dataset
from derm_exp.data.synthetic import (
    class_image_counts,
    ensure_demo_dataset,
    generate_demo_dataset,
    main,
    resolve_data_root,
)


def test_demo_loads_with_expected_counts(demo_root: Path) -> None:
    df = load_metadata(demo_root)
    assert len(df) == 120
    assert df["dx"].value_counts().to_dict() == class_image_counts(120)
    lesions = df.groupby("dx")["lesion_id"].nunique()
    assert (lesions.reindex(list(CLASSES)) >= 3).all()
    assert df.groupby("lesion_id").size().max() > 1  # some lesions have several images
    assert df.groupby("lesion_id")[["dx", "age", "sex", "localization"]].nunique().max().max() <= 1
    assert set(df["dx_type"]) <= {"histo", "follow_up", "consensus", "confocal"}
    assert set(df["sex"]) <= {"male", "female", "unknown"}
    assert Image.open(df["path"][0]).size == (64, 48)
    out = split_dataset(df, 0.15, 0.15, seed=0)
    assert out.groupby("dx")["split"].nunique().eq(3).all()


def test_class_counts_at_800_and_minimum() -> None:
    counts = class_image_counts(800)
    assert sum(counts.values()) == 800 and max(counts, key=counts.get) == "nv"
    # df/vasc rare but >= 8 lesions each (lesions = images / 1.35)
    assert min(round(c / 1.35) for c in counts.values()) >= 8
    assert min(class_image_counts(60).values()) >= 3
    with pytest.raises(DataValidationError, match="n >= 60"):
        class_image_counts(59)


def test_deterministic_overwrite_and_refusal(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", 60, seed=3, size=(32, 24))
    b = generate_demo_dataset(tmp_path / "b", 60, seed=3, size=(32, 24))
    csv = "HAM10000_metadata.csv"
    assert (a / csv).read_text() == (b / csv).read_text()
    first = sorted((a / "images").iterdir())[0].name
    assert (a / "images" / first).read_bytes() == (b / "images" / first).read_bytes()
    with pytest.raises(DataValidationError, match="overwrite=true"):
        generate_demo_dataset(a, 60, seed=4, size=(32, 24))
    generate_demo_dataset(a, 70, seed=4, size=(32, 24), overwrite=True)
    assert len(list((a / "images").iterdir())) == 70
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]  # temp folder cleaned


def test_classes_are_learnable(tmp_path: Path) -> None:
    """A linear model on 8x6 thumbnails beats chance (1/7) by far, so a small CNN can learn it."""
    root = generate_demo_dataset(tmp_path / "d", 400, seed=1, size=(48, 36))
    df = split_dataset(load_metadata(root), 0.2, 0.2, seed=0)
    x = np.stack([np.asarray(Image.open(p).resize((8, 6)), np.float32).ravel() for p in df["path"]])
    y, test = df["label"].to_numpy(), (df["split"] == "test").to_numpy()
    clf = LogisticRegression(max_iter=500, class_weight="balanced").fit(x[~test] / 255, y[~test])
    assert balanced_accuracy_score(y[test], clf.predict(x[test] / 255)) > 0.4


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "out=DIR" in capsys.readouterr().out
    assert main(["n=100"]) == 2
    assert "out=DIR is required" in capsys.readouterr().err
    assert main([f"out={tmp_path / 'x'}", "n=abc"]) == 2
    assert "bad value in 'n=abc'" in capsys.readouterr().err
    assert main([f"out={tmp_path / 'x'}", "bogus"]) == 2
    assert main([f"out={tmp_path / 'x'}", "n=60", "seed=1", "size=32x24"]) == 0
    assert len(load_metadata(tmp_path / "x")) == 60


def test_ensure_and_resolve(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    target.mkdir()
    (target / "README.txt").write_text("keep me")  # other files in the folder survive
    cfg = {"root": None, "demo": {"dir": str(target), "n_images": 60, "seed": 0}}
    assert resolve_data_root(cfg) == target.resolve()
    assert len(load_metadata(target)) == 60 and (target / "README.txt").read_text() == "keep me"
    stamp = (target / "HAM10000_metadata.csv").stat().st_mtime_ns
    assert ensure_demo_dataset(target, 60) == target.resolve()  # present: not regenerated
    assert (target / "HAM10000_metadata.csv").stat().st_mtime_ns == stamp
    assert resolve_data_root({**cfg, "root": str(tmp_path / "real")}) == tmp_path / "real"
