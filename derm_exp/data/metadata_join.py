"""Patient metadata (age, sex, localization) for a frame of images that lacks it.

Split CSVs hold only image_id, lesion_id, dx, label and path; subgroup evaluation reads the
patient columns from the dataset's metadata CSV, joined by ``image_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from derm_exp.data.metadata import METADATA_FILE

log = logging.getLogger(__name__)

PATIENT_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")


def with_patient_metadata(
    frame: pd.DataFrame, metadata_csv: str | Path | None, replace: bool = False
) -> pd.DataFrame:
    """``frame`` with the patient columns it lacks joined from ``metadata_csv`` by image_id.

    Returns ``frame`` unchanged when it has them all, when no file is given or readable (logged),
    or when the file has none of them. Images the file does not list get empty cells.
    ``replace``: the file (a user's explicit choice) supplies every patient column; the frame's
    own are dropped first, so a column the file lacks is reported unavailable.
    """
    if replace and metadata_csv is not None:
        frame = frame.drop(columns=[c for c in PATIENT_COLUMNS if c in frame.columns])
    lacking = [c for c in PATIENT_COLUMNS if c not in frame.columns]
    if not lacking or metadata_csv is None:
        return frame
    path = Path(metadata_csv).expanduser()
    try:
        meta = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        log.info("no patient metadata for subgroups from %s (%s)", path, exc)
        return frame
    meta.columns = [str(c).strip() for c in meta.columns]
    found = [c for c in lacking if c in meta.columns]
    if "image_id" not in meta.columns or not found:
        return frame
    meta = meta.drop_duplicates("image_id").set_index("image_id")
    ids = frame["image_id"].astype(str)
    return frame.assign(**{c: ids.map(meta[c]) for c in found})


def metadata_csv_for(data_cfg: Mapping[str, Any]) -> Path | None:
    """The metadata CSV of a (training run's) ``data`` config: ``data.root``, or the demo folder
    when it is null, joined with ``data.metadata_file``; never generates the demo dataset."""
    root = data_cfg.get("root") or (data_cfg.get("demo") or {}).get("dir")
    if not root:
        return None
    return Path(str(root)).expanduser() / str(data_cfg.get("metadata_file") or METADATA_FILE)
