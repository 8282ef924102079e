"""The end-of-training gallery: per class, test images the model got right and wrong, with their
heat maps, and the sanity figures, logged to the active MLflow run.

Artifacts ``explanations/gallery_<class>.png`` (right images framed green, wrong ones red),
``explanations/sanity.png`` and ``explanations/sanity.json``; metrics ``explain/*`` (see
:meth:`~derm_exp.explanations.sanity.SanityReport.metrics`). Switched by ``explain.gallery``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from derm_exp.data.images import BadImageError, load_image
from derm_exp.data.transforms import build_eval_transform
from derm_exp.explanations.figures import METHOD_TITLES, Tile, sanity_figure, tile_sheet
from derm_exp.explanations.methods import explain_batch, has_attention
from derm_exp.explanations.overlay import input_box, overlay
from derm_exp.explanations.sanity import sanity_check

log = logging.getLogger(__name__)


def pick_examples(labels: np.ndarray, probs: np.ndarray, per_class: int) -> dict[int, list[int]]:
    """Per true class: up to ``per_class`` right then ``per_class`` wrong test indices, the most
    confident of each first."""
    predicted, confidence = probs.argmax(1), probs.max(1)
    picked: dict[int, list[int]] = {}
    for c in range(probs.shape[1]):
        chosen: list[int] = []
        for right in (True, False):
            idx = np.flatnonzero((labels == c) & ((predicted == c) == right))
            chosen += idx[np.argsort(-confidence[idx], kind="stable")][:per_class].tolist()
        if chosen:
            picked[c] = chosen
    return picked


def _tiles(
    model: nn.Module,
    paths: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    indices: list[int],
    classes: Sequence[str],
    method: str,
    metadata: np.ndarray | None = None,
) -> tuple[list[Tile], torch.Tensor, list[int]]:
    """Overlays of the images at ``indices`` (unreadable ones left out; a metadata model's maps
    with their rows of ``metadata``), their batch and the indices kept."""
    data_config = model.data_config
    transform = build_eval_transform(data_config)
    images, kept = [], []
    for i in indices:
        try:
            images.append(load_image(paths[i]))
            kept.append(i)
        except BadImageError as exc:
            log.warning("gallery: skipping %s", exc)
    if not images:
        return [], torch.empty(0), []
    batch = torch.stack([transform(im) for im in images])
    targets = probs[kept].argmax(1).tolist()
    maps = explain_batch(
        model, batch, method=method, targets=targets, metadata=_rows(metadata, kept)
    )
    tiles = []
    for image, heat, i in zip(images, maps, kept, strict=True):
        pred = int(probs[i].argmax())
        right = pred == int(labels[i])
        tiles.append(
            Tile(
                overlay(image, heat, box=input_box(image.size, data_config)),
                f"true {classes[labels[i]]}, pred {classes[pred]} {probs[i, pred]:.0%}",
                "right" if right else "wrong",
                "tab:green" if right else "tab:red",
            )
        )
    return tiles, batch, kept


def _rows(metadata: np.ndarray | None, indices: list[int]) -> torch.Tensor | None:
    """The encoded metadata of the test images at ``indices`` (None for an image-only run)."""
    return None if metadata is None else torch.from_numpy(np.asarray(metadata)[indices])


def _spread(kept: list[int], labels: np.ndarray) -> list[int]:
    """Positions in ``kept`` ordered round-robin over classes, so the first cover many classes."""
    by_class: dict[int, list[int]] = {}
    for row, i in enumerate(kept):
        by_class.setdefault(int(labels[i]), []).append(row)
    rows, queues = [], list(by_class.values())
    while any(queues):
        rows += [q.pop(0) for q in queues if q]
    return rows


def log_explanation_gallery(
    model: nn.Module,
    paths: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    settings: Mapping[str, Any],
    metadata: np.ndarray | None = None,
) -> dict[str, float]:
    """Log the gallery and the sanity figures to the active MLflow run; return the metrics.
    ``metadata``: the test images' encoded patient metadata (rows as ``paths``) of a
    metadata-fusion run, explained with it.

    ``settings``: ``per_class`` (right and wrong images per class), ``method`` (gradcam, ...;
    ``attention`` falls back to gradcam for heads without attention), ``sanity_images``.
    """
    import mlflow

    start = time.monotonic()
    method = str(settings.get("method", "gradcam"))
    if method == "attention" and not has_attention(model):
        method = "gradcam"
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=np.float64)
    picked = pick_examples(labels, probs, int(settings.get("per_class", 2)))
    order = [i for indices in picked.values() for i in indices]
    tiles, batch, kept = _tiles(model, paths, labels, probs, order, classes, method, metadata)
    for c in picked:
        shown = [t for t, i in zip(tiles, kept, strict=True) if labels[i] == c]
        if not shown:
            continue
        title = f"{METHOD_TITLES.get(method, method)}: test images of class {classes[c]}"
        figure = tile_sheet(shown, title=title, columns=len(shown))
        mlflow.log_figure(figure, f"explanations/gallery_{classes[c]}.png")
        _close(figure)
    n_sanity = int(settings.get("sanity_images", 8))
    if not tiles or n_sanity <= 0:
        return {}
    rows = _spread(kept, labels)[:n_sanity]
    meta = _rows(metadata, [kept[r] for r in rows])
    report = sanity_check(model, batch[rows], method=method, metadata=meta)
    metrics = report.metrics()
    mlflow.log_metrics(metrics)
    figure = sanity_figure(report)
    mlflow.log_figure(figure, "explanations/sanity.png")
    _close(figure)
    cascade = [{"randomised_through": n, "spearman": v} for n, v in report.cascade]
    mlflow.log_dict({**metrics, "method": method, "cascade": cascade}, "explanations/sanity.json")
    log.info("%s", report.summary())
    log.info(
        "explanation gallery: %d image(s) of %d class(es) in %.1f s",
        len(tiles),
        len({int(labels[i]) for i in kept}),
        time.monotonic() - start,
    )
    return metrics


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def log_training_gallery(
    cfg: Any,
    model: nn.Module,
    paths: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    metadata: np.ndarray | None = None,
) -> dict[str, float]:
    """:func:`log_explanation_gallery` at the end of a training run when ``cfg.explain.gallery``
    is on. A failure costs the gallery (a warning and tag ``derm_exp.explain_gallery_error``),
    never the finished run."""
    settings = cfg.get("explain") or {}
    if not settings.get("gallery", False):
        return {}
    try:
        return log_explanation_gallery(model, paths, labels, probs, classes, settings, metadata)
    except Exception as exc:  # noqa: BLE001 - optional figures must not lose a trained model
        import mlflow

        log.warning("explanation gallery skipped (%s: %s)", type(exc).__name__, exc)
        mlflow.set_tag("derm_exp.explain_gallery_error", f"{type(exc).__name__}: {exc}"[:500])
        return {}
