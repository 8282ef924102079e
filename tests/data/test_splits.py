"""Split invariants: lesion-aware, stratified, deterministic; clear errors when impossible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from derm_exp.data.errors import DataValidationError
from derm_exp.data.metadata import CLASS_TO_INDEX, CLASSES
from derm_exp.data.splits import load_split_csv, save_splits, split_dataset, split_summary


def frame(lesions: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Metadata-like frame with 1-3 images per lesion."""
    rng = np.random.default_rng(seed)
    rows = []
    for dx, n in lesions.items():
        for li in range(n):
            for k in range(int(rng.integers(1, 4))):
                rows.append((f"L_{dx}_{li}", f"I_{dx}_{li}_{k}", dx))
    df = pd.DataFrame(rows, columns=["lesion_id", "image_id", "dx"])
    df["label"] = df["dx"].map(CLASS_TO_INDEX)
    df["path"] = "/x/" + df["image_id"] + ".jpg"
    return df


SIZES = {"akiec": 20, "bcc": 30, "bkl": 60, "df": 3, "mel": 50, "nv": 400, "vasc": 7}


def test_invariants() -> None:
    df = frame(SIZES)
    out = split_dataset(df, 0.15, 0.2, seed=1)
    assert len(out) == len(df) and set(out["split"]) == {"train", "val", "test"}
    assert out.groupby("lesion_id")["split"].nunique().max() == 1
    assert (pd.crosstab(out["dx"], out["split"]) > 0).all().all()
    lesions = out.drop_duplicates("lesion_id").groupby(["dx", "split"]).size().unstack()
    # round-half-up(fraction * lesions), at least 1, measured in lesions
    assert lesions.loc["nv", "val"] == 60 and lesions.loc["nv", "test"] == 80
    assert lesions.loc["df"].tolist() == [1, 1, 1]  # test, train, val
    assert lesions.loc["vasc", "val"] == 1 and lesions.loc["vasc", "test"] == 1
    assert "split" not in df  # input untouched


def test_deterministic_and_seed_dependent() -> None:
    df = frame(SIZES)
    a = split_dataset(df, 0.15, 0.15, seed=7)
    b = split_dataset(df.sample(frac=1, random_state=3), 0.15, 0.15, seed=7)
    c = split_dataset(df, 0.15, 0.15, seed=8)
    by_id = a.set_index("image_id")["split"]
    assert by_id.equals(b.set_index("image_id")["split"].loc[by_id.index])  # row order irrelevant
    assert not by_id.equals(c.set_index("image_id")["split"])


def test_class_too_small_names_class_and_count() -> None:
    df = frame({**SIZES, "df": 2, "vasc": 1})
    with pytest.raises(DataValidationError, match=r"df has 2 lesion\(s\); vasc has 1 lesion\(s\)"):
        split_dataset(df, 0.15, 0.15, seed=0)


def test_absent_class_is_allowed() -> None:
    out = split_dataset(frame({"nv": 10, "mel": 5}), 0.2, 0.2, seed=0)
    assert set(out["dx"]) == {"nv", "mel"}


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [(0.0, 0.2, "val_fraction must be in"), (0.2, 1.0, "test_fraction"), (0.5, 0.5, "< 1")],
)
def test_bad_fractions(val: float, test: float, message: str) -> None:
    with pytest.raises(DataValidationError, match=message):
        split_dataset(frame(SIZES), val, test, seed=0)


def test_mixed_dx_lesion_stays_in_one_split() -> None:
    df = frame(SIZES)
    extra = pd.DataFrame(
        [("L_nv_0", "I_mixed", "mel", CLASS_TO_INDEX["mel"], "/x/I_mixed.jpg")], columns=df.columns
    )
    out = split_dataset(pd.concat([df, extra], ignore_index=True), 0.15, 0.15, seed=0)
    assert out[out["lesion_id"] == "L_nv_0"]["split"].nunique() == 1


def test_summary_and_csv_roundtrip(tmp_path) -> None:
    out = split_dataset(frame(SIZES), 0.15, 0.15, seed=0)
    summary = split_summary(out)
    assert list(summary.index) == [*CLASSES, "total"]
    assert summary.loc["total", ("images", "train")] == (out["split"] == "train").sum()
    paths = save_splits(out, tmp_path)
    assert [p.name for p in paths] == ["train.csv", "val.csv", "test.csv"]
    back = pd.concat([load_split_csv(p) for p in paths])
    assert list(back.columns) == ["image_id", "lesion_id", "dx", "label", "path"]
    assert sorted(back["image_id"]) == sorted(out["image_id"])
    (tmp_path / "bad.csv").write_text("image_id,lesion_id,dx,label,path\na,b,nv,0,/x\n")
    with pytest.raises(DataValidationError, match="do not match"):
        load_split_csv(tmp_path / "bad.csv")
