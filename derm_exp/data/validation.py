"""Full dataset validation for ``prepare_data``: the metadata checks, then every image decoded."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from derm_exp.data.metadata import (
    METADATA_FILE,
    ValidationReport,
    check_metadata,
    examples_text,
)


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

    from derm_exp.data.images import BadImageError, load_image

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
    report = check_metadata(root, metadata_file)
    if check_images and report.frame is not None:
        report.images_checked = True
        report.unreadable_images = find_unreadable(report.frame["path"], progress=progress)
        if report.unreadable_images:
            msg = (
                f"{len(report.unreadable_images)} image(s) cannot be decoded: "
                f"{examples_text([Path(p).name for p in report.unreadable_images])}"
            )
            (report.fatal if unreadable_fatal else report.warnings).append(msg)
    return report
