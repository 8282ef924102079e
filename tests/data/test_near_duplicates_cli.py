"""``python -m derm_exp.prepare_data`` reports near-duplicates across lesion ids, writes them as
CSV and, with data.group_near_duplicates=true, splits them as one group (end to end)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageOps

from tests.data.test_prepare_data import run


@pytest.fixture
def root_with_copies(demo_root: Path, tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """The demo dataset plus a flipped and a resized copy of two images under new lesion ids."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    planted, rows = [], []
    for k, (make, row) in enumerate(
        zip(
            (ImageOps.mirror, lambda im: im.resize((48, 36))),
            meta.iloc[[3, 40]].itertuples(),
            strict=True,
        )
    ):
        with Image.open(root / "images" / f"{row.image_id}.jpg") as im:
            make(im.convert("RGB")).save(root / "images" / f"ISIC_COPY{k}.jpg", quality=80)
        rows.append({**row._asdict(), "lesion_id": f"HAM_COPY{k}", "image_id": f"ISIC_COPY{k}"})
        planted.append((row.image_id, f"ISIC_COPY{k}"))
    extra = pd.DataFrame(rows).drop(columns="Index")
    pd.concat([meta, extra], ignore_index=True).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root, planted


@pytest.mark.slow
def test_prepare_data_reports_and_groups_near_duplicates(root_with_copies, tmp_path):
    root, planted = root_with_copies
    csv = tmp_path / "dups.csv"
    proc = run(
        tmp_path,
        f"data.root={root}",
        f"near_duplicates_csv={csv}",
        "data.group_near_duplicates=true",
        f"splits_out={tmp_path / 'splits'}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Near-duplicate images across lesion ids" in proc.stdout
    assert "near-duplicate lesions grouped" in proc.stdout
    pairs = pd.read_csv(csv)
    found = {frozenset(p) for p in zip(pairs["image_id_a"], pairs["image_id_b"], strict=True)}
    assert {frozenset(p) for p in planted} <= found
    split = pd.concat(
        pd.read_csv(tmp_path / "splits" / f"{s}.csv").assign(s=s) for s in ("train", "val", "test")
    )
    split_of = dict(zip(split["lesion_id"], split["s"], strict=False))
    for a, b in zip(pairs["lesion_id_a"], pairs["lesion_id_b"], strict=True):
        assert split_of[a] == split_of[b]


@pytest.mark.slow
def test_near_duplicate_audit_can_be_skipped(demo_root, tmp_path):
    proc = run(tmp_path, f"data.root={demo_root}", "near_duplicates=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Near-duplicate" not in proc.stdout
