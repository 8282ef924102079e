"""Lesion-aware, class-stratified train/val/test splits."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derm_exp.data.errors import DataValidationError
from derm_exp.data.metadata import CLASS_TO_INDEX, CLASSES

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "dx", "label", "path")
SPLIT_METADATA_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")  # written when present
MIN_LESIONS_PER_CLASS = 3
log = logging.getLogger(__name__)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < float(f) < 1.0:
            raise DataValidationError(f"data.{name} must be in (0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise DataValidationError(
            f"data.val_fraction + data.test_fraction must be < 1 to leave a training split, "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )


def lesion_classes(df: pd.DataFrame) -> pd.Series:
    """Class of each lesion_id: its most common dx (ties -> earlier in CLASSES)."""
    counts = pd.crosstab(df["lesion_id"], df["dx"]).reindex(columns=list(CLASSES), fill_value=0)
    return counts.idxmax(axis=1)


def _n_holdout(n: int, fraction: float) -> int:
    return max(1, math.floor(fraction * n + 0.5))  # round half up, unlike Python's round()


def split_dataset(
    df: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    lesion_groups: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Copy of ``df`` with a ``split`` column in {"train", "val", "test"}.

    For each class (a lesion's class is its most common dx), that class's lesion ids are sorted,
    shuffled with a generator seeded by ``seed`` and cut: ``round(val_fraction * n)`` lesions
    (at least 1) go to val, likewise for test, the rest to train. So every image of a lesion lands
    in one split, every class is in every split, split sizes are fractions of *lesions*, and the
    result depends only on the data and ``seed`` (not on row order). A class with fewer than
    3 lesions cannot be split and raises :class:`DataValidationError`.

    ``lesion_groups`` (lesion id -> group id, e.g. from near-duplicate images, see
    :mod:`derm_exp.data.near_duplicates`) makes a group the unit instead of a lesion: all its
    lesions land in one split. Lesions missing from it are their own group.
    """
    _check_fractions(val_fraction, test_fraction)
    missing = [c for c in ("lesion_id", "dx") if c not in df.columns]
    if missing:
        raise DataValidationError(f"cannot split: frame lacks column(s) {missing}")
    if df.empty:
        raise DataValidationError("cannot split an empty dataset")

    units = df["lesion_id"].astype(str)
    if lesion_groups is not None:
        units = units.map(lambda lesion: lesion_groups.get(lesion, lesion))
    per_lesion = lesion_classes(df.assign(lesion_id=units))
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    too_small = []
    for cls in CLASSES:
        lesions = np.sort(per_lesion.index[per_lesion == cls].to_numpy(dtype=str))
        n = len(lesions)
        if n == 0:
            continue
        if n < MIN_LESIONS_PER_CLASS:
            too_small.append(f"{cls} has {n} lesion(s)")
            continue
        n_val, n_test = _n_holdout(n, val_fraction), _n_holdout(n, test_fraction)
        while n_val + n_test > n - 1:  # keep at least one training lesion
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        lesions = rng.permutation(lesions)
        for i, lesion in enumerate(lesions):
            assignment[lesion] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    if too_small:
        raise DataValidationError(
            f"cannot put every class in train, val and test: {'; '.join(too_small)} "
            f"(need at least {MIN_LESIONS_PER_CLASS} lesions per class). Add images of those "
            "classes or remove their rows from the metadata"
        )
    out = df.copy()
    out["split"] = units.map(assignment)
    return out


def split_from_config(
    df: pd.DataFrame, data_cfg: Mapping[str, Any], pairs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """:func:`split_dataset` with the ``data`` config's fractions and seed; with
    ``data.group_near_duplicates`` lesions joined by near-duplicate images (``pairs``, found
    here when not given) are split as one group."""
    groups = None
    if data_cfg.get("group_near_duplicates", False):
        from derm_exp.data.near_duplicates import lesion_groups, near_duplicate_pairs

        if pairs is None:
            pairs = near_duplicate_pairs(
                df, int(data_cfg.get("near_duplicate_threshold", 24)), data_cfg.get("cache_dir")
            )
        groups = lesion_groups(df["lesion_id"].astype(str).unique(), pairs)
        merged = len(groups) - len(set(groups.values()))
        log.info(
            "group_near_duplicates: %d near-duplicate pair(s) merge %d lesion(s) into others' "
            "split groups",
            len(pairs),
            merged,
        )
    return split_dataset(
        df,
        float(data_cfg["val_fraction"]),
        float(data_cfg["test_fraction"]),
        int(data_cfg["split_seed"]),
        lesion_groups=groups,
    )


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Images and lesions per class and split: rows = classes + "total", columns = (unit, split)."""
    rows = {}
    for cls in (*CLASSES, "total"):
        sub = df if cls == "total" else df[df["dx"] == cls]
        row = {}
        for s in SPLITS:
            part = sub[sub["split"] == s]
            row[("images", s)] = len(part)
            row[("lesions", s)] = part["lesion_id"].nunique()
        rows[cls] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def save_splits(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write ``train.csv``/``val.csv``/``test.csv`` (image_id, lesion_id, dx, label, path, and
    the patient metadata columns age, sex, localization where the dataset has them, so
    evaluating a metadata model on a run's split finds them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    columns = [*SPLIT_COLUMNS, *(c for c in SPLIT_METADATA_COLUMNS if c in df.columns)]
    for s in SPLITS:
        path = out_dir / f"{s}.csv"
        df.loc[df["split"] == s, columns].to_csv(path, index=False)
        written.append(path)
    return written


def load_split_csv(path: str | Path) -> pd.DataFrame:
    """Read a split CSV written by :func:`save_splits`, checking columns and labels."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"split file {path} not found")
    df = pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "dx": str, "path": str})
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(f"split file {path} lacks column(s) {missing}")
    expected = df["dx"].map(CLASS_TO_INDEX)
    if expected.isna().any() or (expected != df["label"]).any():
        raise DataValidationError(f"split file {path} has dx/label values that do not match")
    df["label"] = df["label"].astype("int64")
    return df
