"""HAM10000 metadata: read ``HAM10000_metadata.csv``, index the image folders, validate both."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used
    import pandas as pd

from derm_exp.data.errors import DataValidationError

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_DESCRIPTIONS: dict[str, str] = {
    "akiec": "Actinic keratoses and intraepithelial carcinoma (Bowen's disease)",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesions",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevi",
    "vasc": "Vascular lesions",
}
CLASS_TO_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}

METADATA_FILE = "HAM10000_metadata.csv"
REQUIRED_COLUMNS: tuple[str, ...] = ("lesion_id", "image_id", "dx")
OPTIONAL_COLUMNS: tuple[str, ...] = ("dx_type", "age", "sex", "localization")
# Folders searched for images, in order: the flat layout, then the official two-part download.
IMAGE_DIRS: tuple[str, ...] = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})


@dataclass
class ValidationReport:
    """Everything :func:`validate_dataset` found. ``fatal`` problems make the dataset unusable."""

    root: Path
    metadata_file: str = METADATA_FILE
    n_rows: int = 0
    n_images: int = 0
    n_lesions: int = 0
    image_dirs: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    lesion_counts: dict[str, int] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)
    extra_images: list[str] = field(default_factory=list)
    unreadable_images: list[str] = field(default_factory=list)
    duplicate_image_ids: list[str] = field(default_factory=list)
    unknown_labels: dict[str, int] = field(default_factory=dict)
    images_checked: bool = False
    fatal: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    frame: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.fatal

    def format(self) -> str:
        """Human-readable multi-line report."""
        lines = [
            f"Dataset: {self.root}",
            f"Metadata: {self.metadata_file} ({self.n_rows} rows)",
            f"Image folders: {', '.join(self.image_dirs) or 'none found'}",
            f"Images: {self.n_images} in {self.n_lesions} lesions",
            f"Missing images (rows without a file): {len(self.missing_images)}",
            f"Extra images (files without a row): {len(self.extra_images)}",
            f"Unknown labels: {_format_counts(self.unknown_labels) or 'none'}",
            f"Duplicate image ids: {len(self.duplicate_image_ids)}",
            "Unreadable images: "
            + (str(len(self.unreadable_images)) if self.images_checked else "not checked"),
        ]
        if self.class_counts:
            lines.append("")
            lines.append(f"{'class':<7}{'images':>8}{'lesions':>9}  description")
            for c in CLASSES:
                lines.append(
                    f"{c:<7}{self.class_counts.get(c, 0):>8}{self.lesion_counts.get(c, 0):>9}"
                    f"  {CLASS_DESCRIPTIONS[c]}"
                )
        if self.unreadable_images:
            lines += ["", "Unreadable files:"] + [f"  {p}" for p in self.unreadable_images[:20]]
            if len(self.unreadable_images) > 20:
                lines.append(f"  ... (+{len(self.unreadable_images) - 20} more)")
        if self.warnings:
            lines += ["", "Warnings:"] + [f"  - {w}" for w in self.warnings]
        if self.fatal:
            lines += ["", "FATAL problems:"] + [f"  - {f}" for f in self.fatal]
        lines += ["", "Status: OK" if self.ok else "Status: FAILED"]
        return "\n".join(lines)


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k!r}: {v}" for k, v in counts.items())


def examples_text(items: Sequence[object], k: int = 5) -> str:
    """``a, b, c (+N more)`` for error messages."""
    shown = ", ".join(str(x) for x in items[:k])
    return shown + (f" (+{len(items) - k} more)" if len(items) > k else "")


def index_images(root: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Map image id (file stem) -> path for every image in the known image folders under ``root``.

    One ``os.scandir`` per folder; files are not opened. Returns the index and the folder names
    found. A stem present twice keeps the first (folder order of ``IMAGE_DIRS``) and is logged.
    """
    root = Path(root)
    index: dict[str, Path] = {}
    found: list[str] = []
    duplicates: list[str] = []
    for name in IMAGE_DIRS:
        folder = root / name
        if not folder.is_dir():
            continue
        found.append(name)
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() not in IMAGE_EXTENSIONS or not entry.is_file():
                    continue
                if stem in index:
                    duplicates.append(entry.name)
                    continue
                index[stem] = Path(entry.path)
    if duplicates:
        log.warning(
            "%d image files share an id with another file and were ignored: %s",
            len(duplicates),
            examples_text(duplicates),
        )
    return index, found


def layout_problems(root: Path, metadata_file: str = METADATA_FILE) -> list[str]:
    """What is wrong with the folder layout, from directory entries alone (no file is read).

    Cheap enough to run before any heavy import, so a wrong ``data.root`` fails at once.
    """
    if not root.is_dir():
        return [
            f"dataset folder {root} does not exist; set data.root to the folder holding "
            f"{metadata_file} (or data.root=null for the demo dataset)"
        ]
    problems = []
    if not (root / metadata_file).is_file():
        problems.append(
            f"metadata file {root / metadata_file} not found; HAM10000 ships it as "
            f"{METADATA_FILE} beside the image folders (set data.metadata_file if yours is named "
            "differently)"
        )
    if not any((root / name).is_dir() for name in IMAGE_DIRS):
        problems.append(
            f"no image folder in {root}: expected {IMAGE_DIRS[0]}/ or "
            f"{IMAGE_DIRS[1]}/ + {IMAGE_DIRS[2]}/ with .jpg/.jpeg/.png files"
        )
    return problems


def check_data_root(root: str | Path | None, metadata_file: str = METADATA_FILE) -> None:
    """Raise :class:`DataValidationError` when a given ``data.root`` cannot be a dataset.

    ``None`` (the generated demo dataset) passes. Only the layout is checked (see
    :func:`layout_problems`); :func:`load_metadata` checks the rest when the data is loaded.
    """
    if root is None:
        return
    report = ValidationReport(root=Path(root).expanduser().resolve(), metadata_file=metadata_file)
    report.fatal = layout_problems(report.root, metadata_file)
    _raise_if_fatal(report)


def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        df = pd.read_csv(
            path,
            dtype={"lesion_id": str, "image_id": str, "dx": str},
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError as e:
        raise DataValidationError(
            f"metadata file {path} is empty; it needs a header line "
            f"({','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}) and one row per image"
        ) from e
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataValidationError(f"metadata file {path} is not a readable CSV: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _csv_lines(index: Iterable[int]) -> str:
    """``CSV lines 2, 5 (+N more)``: row positions as line numbers of the file (header = 1)."""
    return f"CSV lines {examples_text([i + 2 for i in index])}"


def _read_metadata(csv: Path, report: ValidationReport) -> pd.DataFrame | None:
    """The metadata rows, required cells stripped (empty ones as NA); None when unusable."""
    import pandas as pd

    if not csv.is_file():
        return None  # reported by layout_problems
    try:
        df = _read_csv(csv)
    except DataValidationError as e:
        report.fatal.append(str(e))
        return None
    report.n_rows = len(df)
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_cols:
        report.fatal.append(
            f"{csv.name} lacks required column(s) {missing_cols}; found {list(df.columns)}. "
            f"Expected header: {','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    if df.empty:
        report.fatal.append(f"{csv.name} has a header but no rows")
        return None
    for col in (c for c in REQUIRED_COLUMNS if c in df.columns):
        df[col] = df[col].str.strip().replace("", pd.NA)
    if "dx" in df.columns:
        df["dx"] = df["dx"].str.lower()
    return df


def _check_empty_cells(df: pd.DataFrame, report: ValidationReport) -> None:
    for col in (c for c in REQUIRED_COLUMNS if c in df.columns):
        empty = df.index[df[col].isna()]
        if len(empty):
            report.fatal.append(
                f"column {col!r} is empty in {len(empty)} row(s) ({_csv_lines(empty)})"
            )


def _check_labels(df: pd.DataFrame, report: ValidationReport) -> None:
    if "dx" not in df.columns:
        return
    unknown = df.loc[df["dx"].notna() & ~df["dx"].isin(CLASSES), "dx"]
    if len(unknown):
        report.unknown_labels = unknown.value_counts().to_dict()
        report.fatal.append(
            f"unknown dx label(s) {_format_counts(report.unknown_labels)} "
            f"({_csv_lines(unknown.index)}); expected one of {', '.join(CLASSES)}"
        )


def _check_image_ids(df: pd.DataFrame, report: ValidationReport) -> None:
    if "image_id" not in df.columns:
        return
    ids = df["image_id"].dropna()
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        report.duplicate_image_ids = sorted(set(dup))
        report.fatal.append(
            f"{len(report.duplicate_image_ids)} image_id(s) appear in more than one row: "
            f"{examples_text(report.duplicate_image_ids)}; each image must be listed once"
        )
    bad_ids = [i for i in ids if "/" in i or "\\" in i or ".." in i or i.startswith("~")]
    if bad_ids:
        report.fatal.append(
            f"{len(bad_ids)} image_id(s) contain a path separator or '..': "
            f"{examples_text(bad_ids)}; image_id must be a bare file name without extension "
            "(e.g. ISIC_0024306)"
        )


def _match_images(df: pd.DataFrame, index: dict[str, Path], report: ValidationReport) -> None:
    """Rows without a file (fatal) and files without a row (a warning)."""
    if not index or "image_id" not in df.columns:
        return
    ids = set(df["image_id"].dropna())
    report.missing_images = sorted(ids - index.keys())
    report.extra_images = sorted(index.keys() - ids)
    if report.missing_images:
        report.fatal.append(
            f"{len(report.missing_images)} metadata row(s) have no image file: "
            f"{examples_text(report.missing_images)} (looked in {', '.join(report.image_dirs)}); "
            "add the files or delete those rows"
        )
    if report.extra_images:
        report.warnings.append(
            f"{len(report.extra_images)} image file(s) have no metadata row and are ignored: "
            f"{examples_text(report.extra_images)}"
        )


def _count_classes(df: pd.DataFrame, report: ValidationReport) -> None:
    """Images and lesions per class; warnings for mixed-label lesions, absent classes/columns."""
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            report.warnings.append(f"optional column {col!r} is missing")
    if not {"dx", "lesion_id", "image_id"} <= set(df.columns):
        return
    known = df[df["dx"].isin(CLASSES)]
    lesion_dx = known.groupby("lesion_id")["dx"].nunique()
    mixed = list(lesion_dx.index[lesion_dx > 1])
    if mixed:
        report.warnings.append(
            f"{len(mixed)} lesion(s) have images with different dx (split uses the most common): "
            f"{examples_text(mixed)}"
        )
    report.n_images = int(len(known) - known["image_id"].isin(report.missing_images).sum())
    report.n_lesions = int(known["lesion_id"].nunique())
    report.class_counts = {c: int((known["dx"] == c).sum()) for c in CLASSES}
    report.lesion_counts = {
        c: int(known.loc[known["dx"] == c, "lesion_id"].nunique()) for c in CLASSES
    }
    absent = [c for c in CLASSES if report.class_counts[c] == 0]
    if absent and not report.fatal:
        report.warnings.append(f"class(es) with no images: {', '.join(absent)}")


def check_metadata(root: str | Path, metadata_file: str = METADATA_FILE) -> ValidationReport:
    """Read and validate metadata + image index; problems go into the report, never raised.

    Every check runs even when an earlier one found a fatal problem (an empty lesion_id does not
    hide unknown labels or missing images), so one pass reports everything to fix.
    """
    import pandas as pd

    root = Path(root).expanduser().resolve()
    report = ValidationReport(root=root, metadata_file=metadata_file)
    report.fatal += layout_problems(root, metadata_file)
    if not root.is_dir():
        return report
    index, report.image_dirs = index_images(root)
    if report.image_dirs and not index:
        report.fatal.append(
            f"no .jpg/.jpeg/.png files in {', '.join(report.image_dirs)} under {root}"
        )
    df = _read_metadata(root / metadata_file, report)
    if df is None:
        return report
    _check_empty_cells(df, report)
    _check_labels(df, report)
    _check_image_ids(df, report)
    _match_images(df, index, report)
    _count_classes(df, report)
    if report.fatal:
        return report
    if "age" in df.columns:
        df["age"] = pd.to_numeric(df["age"], errors="coerce")
    df["path"] = [str(index[i]) for i in df["image_id"]]
    df["label"] = df["dx"].map(CLASS_TO_INDEX).astype("int64")
    report.frame = df.reset_index(drop=True)
    return report


def _raise_if_fatal(report: ValidationReport) -> None:
    if report.fatal:
        problems = "\n".join(f"  - {p}" for p in report.fatal)
        raise DataValidationError(f"dataset {report.root} is not usable:\n{problems}")


def load_metadata(root: str | Path, metadata_file: str = METADATA_FILE) -> pd.DataFrame:
    """Validated metadata frame for the HAM10000-format dataset in ``root``.

    Columns: lesion_id, image_id, dx (+ dx_type, age, sex, localization when present), ``path``
    (absolute image path) and ``label`` (index into :data:`CLASSES`). Images are matched by file
    name only (no image is opened). Raises :class:`DataValidationError` listing every fatal problem.
    """
    report = check_metadata(root, metadata_file)
    _raise_if_fatal(report)
    for w in report.warnings:
        log.warning("%s", w)
    assert report.frame is not None
    return report.frame
