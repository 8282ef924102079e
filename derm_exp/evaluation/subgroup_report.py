"""Subgroup evaluation as ``derm_exp.evaluate`` and the end-of-training report run it.

:func:`subgroup_report` turns the evaluated images' metadata columns (age, sex, localization;
callers join them first, see :mod:`derm_exp.data.metadata_join`) into the report of
:func:`derm_exp.evaluation.subgroups.evaluate_subgroups` (rules in that module). Settings
(``subgroups`` in conf/evaluate.yaml, ``evaluation.subgroups`` in conf/train.yaml): ``enabled``
and ``min_lesions``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)


def subgroup_settings(settings: Mapping[str, Any] | None) -> tuple[bool, int]:
    """``(enabled, min_lesions)`` of a ``subgroups`` config node; a clear error when invalid."""
    from derm_exp.errors import ConfigError
    from derm_exp.evaluation.subgroups import DEFAULT_MIN_LESIONS

    settings = settings or {}
    enabled = settings.get("enabled", True)
    min_lesions = settings.get("min_lesions", DEFAULT_MIN_LESIONS)
    if not isinstance(enabled, bool):
        raise ConfigError(f"subgroups.enabled={enabled}: true or false")
    if isinstance(min_lesions, bool) or not isinstance(min_lesions, int) or min_lesions < 1:
        raise ConfigError(f"subgroups.min_lesions={min_lesions}: a whole number >= 1")
    return enabled, min_lesions


def subgroup_report(
    frame: Any,
    y: Any,
    probs: Any,
    classes: Sequence[str],
    *,
    settings: Mapping[str, Any] | None,
    bootstrap: Mapping[str, Any],
    lesion_level: bool = False,
    n_bins: int = 15,
) -> dict[str, Any] | None:
    """The subgroup report of ``probs`` for the images of ``frame`` (same rows, same order; with
    ``lesion_level`` one sample per lesion, in order of first appearance); None when disabled.

    ``bootstrap``: ``n_boot``, ``seed`` and ``alpha`` of the lesion bootstrap.
    """
    from derm_exp.evaluation.subgroups import evaluate_subgroups, subgroup_values

    enabled, min_lesions = subgroup_settings(settings)
    if not enabled:
        return None
    if lesion_level:  # the first image's metadata stands for its lesion
        frame = frame.drop_duplicates("lesion_id")
    lesions = None if lesion_level or "lesion_id" not in frame else frame["lesion_id"]
    section = evaluate_subgroups(
        y,
        probs,
        None if lesions is None else lesions.astype(str).to_numpy(),
        subgroup_values(frame),
        classes,
        min_lesions=min_lesions,
        n_boot=int(bootstrap.get("n_boot", 1000)),
        seed=int(bootstrap.get("seed", 0)),
        alpha=float(bootstrap.get("alpha", 0.05)),
        n_bins=n_bins,
    )
    for attribute, entry in section["attributes"].items():
        if not entry["available"]:
            log.info("subgroups by %s unavailable: %s", attribute, entry["reason"])
    return section


def gaps_line(section: Mapping[str, Any] | None) -> str | None:
    """``subgroup gaps (max - min): balanced accuracy sex 0.031, ...`` for the console."""
    if not section:
        return None
    parts = [
        f"{attribute} {entry['gaps']['balanced_accuracy']['value']:.3f}"
        for attribute, entry in section["attributes"].items()
        if entry["available"] and entry["gaps"]["balanced_accuracy"]["value"] is not None
    ]
    unavailable = [a for a, e in section["attributes"].items() if not e["available"]]
    line = "subgroup balanced-accuracy gaps (max - min): " + (", ".join(parts) or "none defined")
    return line + (f"; unavailable: {', '.join(unavailable)}" if unavailable else "")
