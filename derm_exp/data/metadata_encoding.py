"""Patient metadata (age, sex, body site) as a numeric vector for the model.

Fitted on the training split only (:meth:`MetadataEncoder.fit`) and stored in the checkpoint as
a plain dict (:meth:`MetadataEncoder.to_dict`), so evaluation, the predictor, the registry
pyfunc and ensembles rebuild the very same encoding. The vector, per column:

* ``age``: ``(age - mean) / std`` with the training split's mean/std, then ``age_missing``
  (1 when the age is absent: the normalised value is 0 then, never silently the mean alone);
* ``sex`` / ``localization``: one-hot over the values seen in training, then ``<col>_unknown``
  (a value training never saw: one warning per value) and ``<col>_missing``.

Missing means empty/NaN/None or HAM10000's own ``unknown`` (how the CSV marks "not recorded").
Hand-written rather than scikit-learn's OneHotEncoder/StandardScaler: those have no explicit
missing flag next to an "unseen" code and their fitted state is not a plain dict that a
``weights_only`` checkpoint can hold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from derm_exp.data.errors import DataValidationError

log = logging.getLogger(__name__)

ENCODING_VERSION = 1
METADATA_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")
CATEGORICAL: tuple[str, ...] = ("sex", "localization")
# Columns that carry (or are) the label: never a model input.
LEAKING_COLUMNS: dict[str, str] = {
    "dx_type": "how the diagnosis was made (histopathology, follow-up, ...) leaks the label",
    "dx": "it is the label",
    "label": "it is the label",
    "lesion_id": "it identifies the lesion, so it memorises labels across a lesion's images",
    "image_id": "it identifies the image",
}
AGE_RANGE = (0.0, 120.0)  # years; an age outside it (or not finite) is a typo, never encoded
_MISSING_TEXT = frozenset({"", "unknown", "nan", "none", "null", "na", "n/a"})


class MetadataError(DataValidationError):
    """Metadata columns or values that cannot be used as a model input."""


def check_columns(columns: Iterable[str]) -> tuple[str, ...]:
    """The configured ``model.metadata.columns``, validated: a label-leaking column (``dx_type``,
    ...) or an unknown one is a :class:`MetadataError`; order is kept, duplicates refused."""
    cols = tuple(str(c).strip() for c in columns)
    for col in cols:
        if col in LEAKING_COLUMNS:
            raise MetadataError(
                f"model.metadata.columns lists {col!r}: {LEAKING_COLUMNS[col]}; use only "
                f"{', '.join(METADATA_COLUMNS)}"
            )
        if col not in METADATA_COLUMNS:
            raise MetadataError(
                f"model.metadata.columns lists unknown column {col!r}; choose from "
                f"{', '.join(METADATA_COLUMNS)}"
            )
    if not cols or len(set(cols)) != len(cols):
        raise MetadataError(
            f"model.metadata.columns={list(cols)}: give each of {', '.join(METADATA_COLUMNS)} "
            "at most once, and at least one"
        )
    return cols


def _category(value: Any) -> str | None:
    """A categorical cell normalised (stripped, lower case); None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip().lower()
    return None if text in _MISSING_TEXT else text


def _ages(values: pd.Series) -> np.ndarray:
    """Ages as float64 with NaN for missing; a non-numeric age, or one outside
    :data:`AGE_RANGE` (also an infinite one), is a :class:`MetadataError`."""
    text = values.astype("string").str.strip().str.lower()
    missing = text.isna() | text.isin(_MISSING_TEXT)
    ages = pd.to_numeric(text.mask(missing), errors="coerce")
    bad = text[~missing & ages.isna()]
    if len(bad):
        raise MetadataError(
            f"age must be a number of years or empty, got {', '.join(map(repr, bad[:3]))}"
        )
    low, high = AGE_RANGE
    out_of_range = text[~missing & ages.notna() & ~ages.between(low, high)]
    if len(out_of_range):
        raise MetadataError(
            f"age must be {low:g} to {high:g} years, got {', '.join(map(repr, out_of_range[:3]))}"
        )
    return ages.to_numpy(dtype=np.float64)


@dataclass
class MetadataEncoder:
    """Encodes age/sex/localization columns (see the module docstring)."""

    columns: tuple[str, ...]
    age_mean: float = 0.0
    age_std: float = 1.0
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _warned: set[tuple[str, str]] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def fit(cls, train: pd.DataFrame, columns: Iterable[str]) -> MetadataEncoder:
        """Statistics and category lists from ``train`` (the training split only)."""
        cols = check_columns(columns)
        enc = cls(columns=cols)
        if "age" in cols:
            ages = _ages(train["age"]) if "age" in train else np.array([])
            ages = ages[~np.isnan(ages)]
            if len(ages):
                enc.age_mean = float(ages.mean())
                enc.age_std = float(ages.std()) or 1.0
        for col in (c for c in cols if c in CATEGORICAL):
            seen = {_category(v) for v in train[col]} if col in train else set()
            enc.categories[col] = tuple(sorted(v for v in seen if v is not None))
        return enc

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (``torch.load(weights_only=True)`` reads them back)."""
        return {
            "version": ENCODING_VERSION,
            "columns": list(self.columns),
            "age_mean": self.age_mean,
            "age_std": self.age_std,
            "categories": {k: list(v) for k, v in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetadataEncoder:
        version = int(data.get("version", 0))
        if version != ENCODING_VERSION:
            raise MetadataError(
                f"metadata encoding version {version} is not supported (this derm_exp reads "
                f"version {ENCODING_VERSION}); upgrade derm_exp"
            )
        return cls(
            columns=tuple(data["columns"]),
            age_mean=float(data["age_mean"]),
            age_std=float(data["age_std"]),
            categories={k: tuple(v) for k, v in dict(data["categories"]).items()},
        )

    # -- layout ----------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for col in self.columns:
            if col == "age":
                names += ["age", "age_missing"]
            else:
                names += [f"{col}={v}" for v in self.categories[col]]
                names += [f"{col}_unknown", f"{col}_missing"]
        return names

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def missing_vector(self) -> np.ndarray:
        """The encoding of an image without any metadata (every missing flag set)."""
        return self.encode_records([None])[0]

    # -- encoding --------------------------------------------------------------------------
    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, dim) float32 for the rows of ``frame``; absent columns count as missing."""
        n = len(frame)
        blocks: list[np.ndarray] = []
        for col in self.columns:
            if col == "age":
                ages = _ages(frame["age"]) if "age" in frame else np.full(n, np.nan)
                missing = np.isnan(ages)
                z = np.where(missing, 0.0, (ages - self.age_mean) / self.age_std)
                blocks.append(np.stack([z, missing.astype(np.float64)], axis=1))
            else:
                blocks.append(self._one_hot(col, frame[col] if col in frame else [None] * n))
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _one_hot(self, col: str, values: Iterable[Any]) -> np.ndarray:
        known = {v: i for i, v in enumerate(self.categories[col])}
        cells = [_category(v) for v in values]
        out = np.zeros((len(cells), len(known) + 2), dtype=np.float64)
        for row, value in enumerate(cells):
            if value is None:
                out[row, -1] = 1.0
            elif value in known:
                out[row, known[value]] = 1.0
            else:
                out[row, -2] = 1.0
                self._warn_unknown(col, value)
        return out

    def _warn_unknown(self, col: str, value: str) -> None:
        if (col, value) not in self._warned:
            self._warned.add((col, value))
            log.warning(
                "%s %r was not seen in training: encoded as %s_unknown (known: %s)",
                col,
                value,
                col,
                ", ".join(self.categories[col]) or "none",
            )

    def encode_records(self, records: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
        """(N, dim) float32 for one metadata dict (or None: none known) per image.

        Keys other than :data:`METADATA_COLUMNS` are a :class:`MetadataError` (a typo would
        otherwise silently count as missing); a label-leaking key says why it is refused.
        """
        rows = []
        for rec in records:
            rec = dict(rec or {})
            for key in rec:
                if key in LEAKING_COLUMNS:
                    raise MetadataError(f"metadata {key!r} is refused: {LEAKING_COLUMNS[key]}")
                if key not in METADATA_COLUMNS:
                    raise MetadataError(
                        f"unknown metadata field {key!r}; expected {', '.join(METADATA_COLUMNS)}"
                    )
            rows.append({c: rec.get(c) for c in METADATA_COLUMNS})
        frame = pd.DataFrame(rows, columns=list(METADATA_COLUMNS), dtype=object)
        return self.encode_frame(frame)


def encoder_from_checkpoint(data: Mapping[str, Any] | None) -> MetadataEncoder | None:
    """The encoder stored in a checkpoint's ``metadata_encoding`` (None: image-only model)."""
    return None if not data else MetadataEncoder.from_dict(data)
