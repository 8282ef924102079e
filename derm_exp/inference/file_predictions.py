"""Predict image files batch by batch with one classifier or an ensemble, file by file results.

A file that cannot be decoded does not stop the others: it gets its error instead of a result,
so the results line up with the files given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from derm_exp.data.dataset import BadImageError, load_image
from derm_exp.errors import PredictionInputError
from derm_exp.inference.tta import TTAPreset

log = logging.getLogger(__name__)


class BatchPredictor(Protocol):
    """``SkinLesionPredictor`` and ``EnsemblePredictor`` both predict lists of images so."""

    classes: list[str]

    def predict_batch(
        self,
        images: Sequence[Any],
        batch_size: int = 32,
        tta: Any = None,
        progress: bool = False,
        metadata: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class FilePrediction:
    """One input file: its prediction dict, or why it has none."""

    path: Path
    result: dict[str, Any] | None
    error: str | None = None


def read_error(exc: BadImageError) -> str:
    """A short reason for an unreadable file (the decoder's own message)."""
    cause = exc.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)


def predict_files(
    model: BatchPredictor,
    files: Sequence[Path],
    batch_size: int,
    preset: TTAPreset,
    progress: bool = False,
    metadata: Sequence[dict[str, Any] | None] | None = None,
) -> list[FilePrediction]:
    """One :class:`FilePrediction` per file, in order.

    Each chunk of ``batch_size`` files is decoded here (as the dataset decodes them) and goes
    through the model in one call, so a broken file costs only its own result. ``metadata``:
    one patient-metadata dict (or None) per file, for metadata-fusion models.
    """
    if batch_size < 1:
        raise PredictionInputError(f"batch_size={batch_size} must be >= 1")
    out: list[FilePrediction] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=None if progress else True)
    for start in range(0, len(files), batch_size):
        chunk = list(files[start : start + batch_size])
        images, errors, records = [], {}, []
        for i, path in enumerate(chunk):
            try:
                images.append(load_image(str(path)))
                records.append(None if metadata is None else metadata[start + i])
            except BadImageError as exc:
                errors[i] = read_error(exc)
                log.warning("cannot read %s: %s", path, errors[i])
        meta = None if metadata is None else records
        results = iter(
            model.predict_batch(images, batch_size, preset, metadata=meta) if images else []
        )
        for i, path in enumerate(chunk):
            error = errors.get(i)
            out.append(FilePrediction(path, None if error else next(results), error))
        bar.update(len(chunk))
    bar.close()
    return out
