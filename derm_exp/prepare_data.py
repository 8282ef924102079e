"""Validate a HAM10000-format dataset folder and print what training would use.

``python -m derm_exp.prepare_data data.root=DIR`` reports missing/extra/unreadable images,
unknown labels, duplicate ids, class and lesion counts and the train/val/test split sizes from
the ``data.*`` split settings. Exits with status 1 when the dataset is not usable.
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


def prepare(cfg: DictConfig) -> int:
    """Validate, preview the split, optionally write it; return the exit status."""
    # Imported here so that --help and argument errors do not wait for pandas.
    from derm_exp.data.errors import DataValidationError
    from derm_exp.data.splits import save_splits, split_dataset
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
    split_df = None
    if report.ok:
        assert report.frame is not None
        frame = report.frame[~report.frame["path"].isin(report.unreadable_images)]
        try:
            split_df = split_dataset(
                frame, data.val_fraction, data.test_fraction, int(data.split_seed)
            )
        except DataValidationError as e:
            report.fatal.append(f"split: {e}")
    print(report.format())
    if split_df is None:
        return 1
    print(
        f"\nSplit (images (lesions)), val_fraction={data.val_fraction}, "
        f"test_fraction={data.test_fraction}, split_seed={data.split_seed}:"
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
