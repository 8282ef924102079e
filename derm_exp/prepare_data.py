"""Validate a HAM10000-format dataset folder and print what training would use.

``python -m derm_exp.prepare_data data.root=DIR`` reports missing/extra/unreadable images,
unknown labels, duplicate ids, class and lesion counts, near-duplicate images filed under
different lesion ids (a leakage audit, see :mod:`derm_exp.data.near_duplicates`) and the
train/val/test split sizes from the ``data.*`` split settings. Exits with status 1 when the
dataset is not usable.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def format_split(split_df: pd.DataFrame) -> str:
    """Images (lesions) per class and split as a text table."""
    from derm_exp.data.splits import SPLITS, split_summary

    summary = split_summary(split_df)
    lines = [f"{'class':<7}" + "".join(f"{s:>16}" for s in SPLITS)]
    for cls, row in summary.iterrows():
        cells = [f"{row['images', s]} ({row['lesions', s]})" for s in SPLITS]
        lines.append(f"{cls:<7}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def audit_near_duplicates(cfg: DictConfig, frame: pd.DataFrame) -> pd.DataFrame | None:
    """Find, print and (with near_duplicates_csv) write the cross-lesion near-duplicate
    pairs; None when the audit is off and the split does not need them."""
    from pathlib import Path

    from derm_exp.data.near_duplicates import format_pairs, near_duplicate_pairs

    grouping = bool(cfg.data.get("group_near_duplicates", False))
    if not (cfg.near_duplicates or grouping):
        return None
    threshold = int(cfg.data.near_duplicate_threshold)
    pairs = near_duplicate_pairs(frame, threshold, cfg.data.get("cache_dir"))
    print("\n" + format_pairs(pairs, threshold))
    if cfg.near_duplicates_csv:
        target = Path(cfg.near_duplicates_csv)
        target.parent.mkdir(parents=True, exist_ok=True)
        pairs.to_csv(target, index=False)
        print(f"Wrote {target} ({len(pairs)} pairs)")
    if not grouping and len(pairs):
        print("Split them as one group each: data.group_near_duplicates=true")
    return pairs


def prepare(cfg: DictConfig) -> int:
    """Validate, preview the split, optionally write it; return the exit status."""
    # Imported here so that --help and argument errors do not wait for pandas.
    from derm_exp.data.errors import DataValidationError
    from derm_exp.data.splits import save_splits, split_from_config
    from derm_exp.data.synthetic import resolve_data_root
    from derm_exp.data.validation import validate_dataset

    data = cfg.data
    root = resolve_data_root(data)
    report = validate_dataset(
        root,
        data.metadata_file,
        check_images=bool(cfg.check_images),
        unreadable_fatal=data.on_bad_image == "error",
    )
    print(report.format())
    if not report.ok:
        return 1
    assert report.frame is not None
    frame = report.frame[~report.frame["path"].isin(report.unreadable_images)]
    pairs = audit_near_duplicates(cfg, frame)
    try:
        split_df = split_from_config(frame, data, pairs)
    except DataValidationError as e:
        print(f"\nerror: the dataset cannot be split: {e}", file=sys.stderr)
        return 1
    grouped = ", near-duplicate lesions grouped" if data.get("group_near_duplicates") else ""
    print(
        f"\nSplit (images (lesions)), val_fraction={data.val_fraction}, "
        f"test_fraction={data.test_fraction}, split_seed={data.split_seed}{grouped}:"
    )
    print(format_split(split_df))
    if cfg.splits_out:
        written = save_splits(split_df, cfg.splits_out)
        print("\nWrote " + ", ".join(str(p) for p in written))
    return 0


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: exit status 1 when the dataset is not usable."""
    from derm_exp.data.errors import DataValidationError

    try:
        status = prepare(cfg)
    except (DataValidationError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    run_hydra_main(main, "prepare_data")
