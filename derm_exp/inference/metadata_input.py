"""Patient metadata given with images to a metadata-fusion model: from a split/dataset frame
(evaluation), or from a CSV naming the images (``derm_exp.predict metadata=<csv>``).

Research and education only; not a medical device. Do not use for diagnosis.

The encoding itself is the model's own (:class:`~derm_exp.data.metadata_encoding.MetadataEncoder`
from its checkpoint); an image without metadata is encoded as "nothing known".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derm_exp.data.metadata_encoding import METADATA_COLUMNS, MetadataEncoder
from derm_exp.errors import PredictionInputError

log = logging.getLogger(__name__)

METADATA_MODES = ("auto", "withheld")
IMAGE_KEYS = ("image", "image_id")


def check_metadata_mode(mode: str) -> str:
    """``metadata=auto`` (use what the data has) or ``withheld`` (feed none)."""
    if str(mode) not in METADATA_MODES:
        raise PredictionInputError(f"metadata={mode!r}: choose {' or '.join(METADATA_MODES)}")
    return str(mode)


def frame_metadata(
    frame: pd.DataFrame, encoder: MetadataEncoder | None, mode: str = "auto", where: str = "data"
) -> np.ndarray | None:
    """(N, M) encoded metadata of ``frame``'s rows for a metadata model (None for an image-only
    one); ``mode="withheld"`` encodes every row as "nothing known". Columns the frame lacks
    count as missing, with a warning."""
    if encoder is None:
        return None
    if check_metadata_mode(mode) == "withheld":
        log.info("metadata withheld: every image is encoded as 'nothing known'")
        return np.tile(encoder.missing_vector(), (len(frame), 1))
    absent = [c for c in encoder.columns if c not in frame.columns]
    if absent:
        log.warning(
            "%s has no %s column(s): the metadata model sees them as missing for every image",
            where,
            ", ".join(absent),
        )
    return encoder.encode_frame(frame)


def read_metadata_csv(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{image key: {age, sex, localization}}`` from a CSV with an ``image`` (file name or
    path) or ``image_id`` (file stem) column and any of age, sex, localization."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PredictionInputError(f"metadata CSV not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PredictionInputError(f"metadata CSV {path} is not a readable CSV: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    key = next((k for k in IMAGE_KEYS if k in df.columns), None)
    fields = [c for c in METADATA_COLUMNS if c in df.columns]
    if key is None or not fields:
        raise PredictionInputError(
            f"metadata CSV {path} needs an image or image_id column and at least one of "
            f"{', '.join(METADATA_COLUMNS)}; found {', '.join(df.columns) or 'no columns'}"
        )
    leaking = [c for c in ("dx_type", "dx") if c in df.columns]
    if leaking:
        log.warning("metadata CSV %s: column(s) %s ignored (they leak the label)", path, leaking)
    keys = df[key].str.strip()
    dup = sorted(set(keys[keys.duplicated()]))
    if dup:
        raise PredictionInputError(f"metadata CSV {path} lists {dup[:3]} more than once")
    records = df[fields].to_dict("records")
    return {
        k: {f: (v or None) for f, v in rec.items()} for k, rec in zip(keys, records, strict=True)
    }


def metadata_for_paths(
    paths: list[str], table: dict[str, dict[str, Any]]
) -> list[dict[str, Any] | None]:
    """Each image's row of a :func:`read_metadata_csv` table, matched by path, file name or
    file stem; None (nothing known) for images it does not list, with one warning."""
    out: list[dict[str, Any] | None] = []
    for p in paths:
        found = next((table[k] for k in (p, Path(p).name, Path(p).stem) if k in table), None)
        out.append(found)
    unmatched = sum(r is None for r in out)
    if unmatched:
        log.warning(
            "%d of %d images are not in the metadata CSV: predicted without metadata",
            unmatched,
            len(paths),
        )
    return out
