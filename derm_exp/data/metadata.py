"""HAM10000 metadata: read ``HAM10000_metadata.csv``, index the image folders, validate both."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from derm_exp.data.errors import DataValidationError
from derm_exp.data.images import BadImageError, load_image

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


def _examples(items: Sequence[object], k: int = 5) -> str:
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
            _examples(duplicates),
        )
    return index, found


def _read_csv(path: Path) -> pd.DataFrame:
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


def _check(root: str | Path, metadata_file: str) -> ValidationReport:
    """Read and validate metadata + image index; problems go into the report, never raised."""
    root = Path(root).expanduser().resolve()
    report = ValidationReport(root=root, metadata_file=metadata_file)
    if not root.is_dir():
        report.fatal.append(
            f"dataset folder {root} does not exist; set data.root to the folder holding "
            f"{metadata_file} (or data.root=null for the demo dataset)"
        )
        return report
    csv = root / metadata_file
    if not csv.is_file():
        report.fatal.append(
            f"metadata file {csv} not found; HAM10000 ships it as {METADATA_FILE} beside the "
            "image folders (set data.metadata_file if yours is named differently)"
        )
        return report
    try:
        df = _read_csv(csv)
    except DataValidationError as e:
        report.fatal.append(str(e))
        return report
    report.n_rows = len(df)

    missing_cols = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_cols:
        report.fatal.append(
            f"{csv.name} lacks required column(s) {missing_cols}; found {list(df.columns)}. "
            f"Expected header: {','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
        )
        return report
    if df.empty:
        report.fatal.append(f"{csv.name} has a header but no rows")
        return report

    for col in REQUIRED_COLUMNS:
        df[col] = df[col].str.strip()
        empty = df.index[df[col].isna() | (df[col] == "")]
        if len(empty):
            report.fatal.append(
                f"column {col!r} is empty in {len(empty)} row(s) "
                f"(CSV lines {_examples([i + 2 for i in empty])})"
            )
    if report.fatal:
        return report
    df["dx"] = df["dx"].str.lower()

    unknown = df.loc[~df["dx"].isin(CLASSES), "dx"]
    if len(unknown):
        report.unknown_labels = unknown.value_counts().to_dict()
        report.fatal.append(
            f"unknown dx label(s) {_format_counts(report.unknown_labels)} "
            f"(CSV lines {_examples([i + 2 for i in unknown.index])}); "
            f"expected one of {', '.join(CLASSES)}"
        )

    dup = df.loc[df["image_id"].duplicated(keep=False), "image_id"]
    if len(dup):
        report.duplicate_image_ids = sorted(set(dup))
        report.fatal.append(
            f"{len(report.duplicate_image_ids)} image_id(s) appear in more than one row: "
            f"{_examples(report.duplicate_image_ids)}; each image must be listed once"
        )

    bad_ids = [i for i in df["image_id"] if "/" in i or "\\" in i or ".." in i or i.startswith("~")]
    if bad_ids:
        report.fatal.append(
            f"{len(bad_ids)} image_id(s) contain a path separator or '..': {_examples(bad_ids)}; "
            "image_id must be a bare file name without extension (e.g. ISIC_0024306)"
        )

    index, report.image_dirs = index_images(root)
    if not report.image_dirs:
        report.fatal.append(
            f"no image folder in {root}: expected {IMAGE_DIRS[0]}/ or "
            f"{IMAGE_DIRS[1]}/ + {IMAGE_DIRS[2]}/ with .jpg/.jpeg/.png files"
        )
    elif not index:
        report.fatal.append(
            f"no .jpg/.jpeg/.png files in {', '.join(report.image_dirs)} under {root}"
        )

    if report.image_dirs and index:
        ids = set(df["image_id"])
        report.missing_images = sorted(ids - index.keys())
        report.extra_images = sorted(index.keys() - ids)
        if report.missing_images:
            report.fatal.append(
                f"{len(report.missing_images)} metadata row(s) have no image file: "
                f"{_examples(report.missing_images)} (looked in {', '.join(report.image_dirs)}); "
                "add the files or delete those rows"
            )
        if report.extra_images:
            report.warnings.append(
                f"{len(report.extra_images)} image file(s) have no metadata row and are ignored: "
                f"{_examples(report.extra_images)}"
            )

    lesion_dx = df[df["dx"].isin(CLASSES)].groupby("lesion_id")["dx"].nunique()
    mixed = list(lesion_dx.index[lesion_dx > 1])
    if mixed:
        report.warnings.append(
            f"{len(mixed)} lesion(s) have images with different dx (split uses the most common): "
            f"{_examples(mixed)}"
        )
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            report.warnings.append(f"optional column {col!r} is missing")
    if "age" in df.columns:
        df["age"] = pd.to_numeric(df["age"], errors="coerce")

    known = df[df["dx"].isin(CLASSES)]
    report.n_images = int(len(known) - known["image_id"].isin(report.missing_images).sum())
    report.n_lesions = int(known["lesion_id"].nunique())
    report.class_counts = {c: int((known["dx"] == c).sum()) for c in CLASSES}
    report.lesion_counts = {
        c: int(known.loc[known["dx"] == c, "lesion_id"].nunique()) for c in CLASSES
    }
    absent = [c for c in CLASSES if report.class_counts[c] == 0]
    if absent and not report.fatal:
        report.warnings.append(f"class(es) with no images: {', '.join(absent)}")

    if report.fatal:
        return report
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
    report = _check(root, metadata_file)
    _raise_if_fatal(report)
    for w in report.warnings:
        log.warning("%s", w)
    assert report.frame is not None
    return report.frame


def find_unreadable(
    paths: Iterable[str],
    opener: Callable[[str], object] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> list[str]:
    """Paths that fail to decode with ``opener`` (default: the dataset loader); shows progress.

    Decodes every pixel (stricter than ``PIL.Image.verify``, which misses truncated JPEGs), in
    threads because PIL releases the GIL while decoding.
    """
    from tqdm.auto import tqdm

    opener = opener or load_image
    paths = list(paths)

    def bad(path: str) -> str | None:
        try:
            opener(path)
        except BadImageError:
            return path
        return None

    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(bad, paths)
        it = tqdm(
            results, total=len(paths), desc="Decoding images", unit="img", disable=not progress
        )
        return [p for p in it if p is not None]


def validate_dataset(
    root: str | Path,
    metadata_file: str = METADATA_FILE,
    check_images: bool = True,
    unreadable_fatal: bool = False,
    progress: bool = True,
) -> ValidationReport:
    """Validate the dataset folder without raising; see :class:`ValidationReport`.

    With ``check_images`` every image listed in the metadata is decoded; unreadable ones are
    warnings (training skips them with ``data.on_bad_image=skip``) or fatal with
    ``unreadable_fatal``.
    """
    report = _check(root, metadata_file)
    if check_images and report.frame is not None:
        report.images_checked = True
        report.unreadable_images = find_unreadable(report.frame["path"], progress=progress)
        if report.unreadable_images:
            msg = (
                f"{len(report.unreadable_images)} image(s) cannot be decoded: "
                f"{_examples([Path(p).name for p in report.unreadable_images])}"
            )
            (report.fatal if unreadable_fatal else report.warnings).append(msg)
    return report
