"""Subgroup evaluation: balanced accuracy, macro AUC and ECE per sex, age band and body site.

The metadata is needed only here, at evaluation time, so this works for image-only models.
Each group gets its sizes (images, lesions) and lesion-bootstrap CIs (:func:`bootstrap_ci`).

Rules (also in the report's ``rule`` entry):

* Age bands: ``<30``, ``30-44``, ``45-59``, ``60-74``, ``>=75`` and ``unknown`` (no age). A
  missing or empty sex or localization is ``unknown`` too; every image is in one group of each
  attribute, so no image is dropped.
* A group with fewer than ``min_lesions`` lesions is flagged ``few_lesions``: its metrics are
  reported without a CI and it is left out of the gaps. A group lacking some classes is flagged
  ``classes_missing``: its macro AUC is the mean over the classes it has (undefined, None, with
  fewer than 2).
* Gap of a metric for an attribute = max - min over the groups not flagged ``few_lesions`` whose
  value is defined; None with fewer than 2 such groups.
* A column absent from the data makes that attribute ``available: false`` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from derm_exp.evaluation.bootstrap import MetricFn, _safe_eval, bootstrap_ci, standard_metric_fns
from derm_exp.evaluation.calibration import expected_calibration_error, validate_probs

# The attribute, and the metadata column it is read from.
ATTRIBUTES: dict[str, str] = {"sex": "sex", "age_band": "age", "localization": "localization"}
SUBGROUP_METRICS: tuple[str, ...] = ("balanced_accuracy", "macro_auc", "ece")
# (upper bound, exclusive; label) in years.
AGE_BANDS: tuple[tuple[float, str], ...] = (
    (30, "<30"),
    (45, "30-44"),
    (60, "45-59"),
    (75, "60-74"),
    (math.inf, ">=75"),
)
UNKNOWN = "unknown"
DEFAULT_MIN_LESIONS = 30
RULE = (
    "groups with fewer than {n} lesions are flagged few_lesions: no CI, not in the gaps; "
    "classes_missing: macro AUC over the classes present; gap = max - min over the other groups"
)


def age_band(age: Any) -> str:
    """The band of ``age`` in years (``unknown`` for a missing or non-numeric age)."""
    value = pd.to_numeric(pd.Series([age]), errors="coerce").iloc[0]
    if pd.isna(value):
        return UNKNOWN
    return next(label for upper, label in AGE_BANDS if value < upper)


def _category(values: pd.Series) -> np.ndarray:
    """Strings, with missing/empty cells as ``unknown``."""
    text = values.astype("string").str.strip().fillna(UNKNOWN)
    return text.mask(text == "", UNKNOWN).to_numpy(dtype=object)


def subgroup_values(frame: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """Each image's group per attribute (None where the column is absent from ``frame``)."""
    out: dict[str, np.ndarray | None] = {}
    for attribute, column in ATTRIBUTES.items():
        if column not in frame.columns:
            out[attribute] = None
        elif attribute == "age_band":
            out[attribute] = np.asarray([age_band(a) for a in frame[column]], dtype=object)
        else:
            out[attribute] = _category(frame[column])
    return out


def fast_balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` of the argmax of ``p``.

    Hand-written because sklearn's ``balanced_accuracy_score`` costs ~8 ms per call (input
    checks), which is most of the cost of bootstrapping a few dozen subgroups 1000 times; the
    same definition as :func:`derm_exp.evaluation.metrics.balanced_accuracy` (checked in tests).
    """
    num_classes = p.shape[1]
    support = np.bincount(y, minlength=num_classes)
    hits = np.bincount(y[p.argmax(1) == y], minlength=num_classes)
    present = support > 0
    return float((hits[present] / support[present]).mean())


def subgroup_metric_fns(num_classes: int, n_bins: int = 15) -> dict[str, MetricFn]:
    """``(y, probs) -> float`` for :data:`SUBGROUP_METRICS` (the bootstrap's definitions)."""
    return {
        "balanced_accuracy": fast_balanced_accuracy,
        "macro_auc": standard_metric_fns(num_classes)["macro_auc"],
        "ece": lambda y, p: expected_calibration_error(p, y, n_bins=n_bins),
    }


def _group_entry(
    y: np.ndarray,
    p: np.ndarray,
    lesions: np.ndarray,
    classes: Sequence[str],
    fns: Mapping[str, MetricFn],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Sizes, flags and metrics (point, CI) of one group's predictions."""
    n_lesions = len(set(lesions.tolist()))
    absent = [c for i, c in enumerate(classes) if not (y == i).any()]
    flags = (["few_lesions"] if n_lesions < settings["min_lesions"] else []) + (
        ["classes_missing"] if absent else []
    )
    if "few_lesions" in flags or settings["n_boot"] < 1:
        metrics = {
            k: {"point": _safe_eval(fn, y, p), "low": None, "high": None} for k, fn in fns.items()
        }
    else:
        intervals = bootstrap_ci(
            y, p, lesions, fns, settings["n_boot"], settings["seed"], settings["alpha"]
        )
        metrics = {k: {b: v[b] for b in ("point", "low", "high")} for k, v in intervals.items()}
    return {
        "n_images": int(y.shape[0]),
        "n_lesions": n_lesions,
        "flags": flags,
        "absent_classes": absent,
        "metrics": metrics,
    }


def attribute_gaps(groups: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: max - min over the groups not flagged ``few_lesions`` with a defined value,
    and which groups they are (``value`` None with fewer than 2 such groups)."""
    gaps: dict[str, dict[str, Any]] = {}
    for metric in SUBGROUP_METRICS:
        values = {
            name: g["metrics"][metric]["point"]
            for name, g in groups.items()
            if "few_lesions" not in g["flags"] and g["metrics"][metric]["point"] is not None
        }
        if len(values) < 2:
            gaps[metric] = {"value": None, "max_group": None, "min_group": None}
            continue
        hi, lo = max(values, key=values.get), min(values, key=values.get)
        gaps[metric] = {"value": values[hi] - values[lo], "max_group": hi, "min_group": lo}
    return gaps


def _group_order(attribute: str, names: Sequence[str]) -> list[str]:
    """Age bands in age order, other groups by name; ``unknown`` last."""
    if attribute == "age_band":
        order = [label for _, label in AGE_BANDS]
        return [n for n in order if n in names] + [n for n in names if n not in order]
    return sorted(n for n in names if n != UNKNOWN) + ([UNKNOWN] if UNKNOWN in names else [])


def evaluate_subgroups(
    y_true: Any,
    probs: Any,
    lesions: Sequence[Any] | None,
    values: Mapping[str, np.ndarray | None],
    classes: Sequence[str],
    *,
    min_lesions: int = DEFAULT_MIN_LESIONS,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 15,
) -> dict[str, Any]:
    """The subgroup report of ``probs`` (N, C) against ``y_true`` (N,), JSON-serialisable.

    ``lesions``: the lesion id of each sample (None: each sample is its own lesion);
    ``values``: :func:`subgroup_values` of the same samples. Per attribute, ``groups`` maps a
    group name to :func:`_group_entry`'s sizes, flags and metrics, with ``all`` (every sample)
    first; ``gaps`` is :func:`attribute_gaps`. See the module docstring for the rules.
    """
    y, p = validate_probs(y_true, probs, len(classes), where="evaluate_subgroups")
    ids = np.arange(y.shape[0]) if lesions is None else np.asarray(lesions, dtype=object)
    settings = {"min_lesions": int(min_lesions), "n_boot": int(n_boot), "seed": int(seed)}
    settings["alpha"] = float(alpha)
    fns = subgroup_metric_fns(len(classes), n_bins)
    overall = _group_entry(y, p, ids, classes, fns, settings)
    attributes: dict[str, Any] = {}
    for attribute, column in ATTRIBUTES.items():
        group_of = values.get(attribute)
        if group_of is None:
            reason = f"no '{column}' column in the evaluated data"
            attributes[attribute] = {"available": False, "reason": reason}
            continue
        group_of = np.asarray(group_of, dtype=object)
        groups = {
            name: _group_entry(y[m], p[m], ids[m], classes, fns, settings)
            for name in _group_order(attribute, sorted(set(group_of.tolist())))
            for m in [group_of == name]
        }
        attributes[attribute] = {
            "available": True,
            "groups": groups,
            "gaps": attribute_gaps(groups),
        }
    return {
        "min_lesions": int(min_lesions),
        "rule": RULE.format(n=int(min_lesions)),
        "age_bands": [label for _, label in AGE_BANDS] + [UNKNOWN],
        "n_boot": int(n_boot),
        "level": 1.0 - float(alpha),
        "all": overall,
        "attributes": attributes,
    }


def gap_metrics(section: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{prefix}subgroup_gap_<metric>_<attribute>`` for MLflow (defined gaps only)."""
    out: dict[str, float] = {}
    for attribute, entry in section["attributes"].items():
        for metric, gap in entry.get("gaps", {}).items():
            if gap["value"] is not None:
                out[f"{prefix}subgroup_gap_{metric}_{attribute}"] = float(gap["value"])
    return out


def subgroup_table(section: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (attribute, group), ``all`` first; unavailable attributes get one row whose
    ``flags`` say so. Columns: sizes, flags and each metric with its CI bounds."""
    rows = [_row("all", "all", section["all"])]
    for attribute, entry in section["attributes"].items():
        if not entry["available"]:
            rows.append(
                {"attribute": attribute, "group": "", "flags": f"unavailable: {entry['reason']}"}
            )
            continue
        rows += [_row(attribute, name, g) for name, g in entry["groups"].items()]
    return pd.DataFrame(rows)


def _row(attribute: str, name: str, group: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "attribute": attribute,
        "group": name,
        "n_images": group["n_images"],
        "n_lesions": group["n_lesions"],
        "flags": ",".join(group["flags"]),
    }
    for metric, m in group["metrics"].items():
        row.update(
            {metric: m["point"], f"{metric}_ci_low": m["low"], f"{metric}_ci_high": m["high"]}
        )
    return row


def markdown_table(section: Mapping[str, Any]) -> str:
    """The table as Markdown: ``value [low, high]`` per metric (for docs and the console)."""

    def cell(m: Mapping[str, Any]) -> str:
        if m["point"] is None:
            return "n/a"
        band = f" [{m['low']:.3f}, {m['high']:.3f}]" if m["low"] is not None else ""
        return f"{m['point']:.3f}{band}"

    def line(attribute: str, name: str, g: Mapping[str, Any]) -> str:
        metrics = " | ".join(cell(g["metrics"][k]) for k in SUBGROUP_METRICS)
        sizes = f"{g['n_images']} | {g['n_lesions']}"
        return f"| {attribute} | {name} | {sizes} | {metrics} | {', '.join(g['flags'])} |"

    columns = ["attribute", "group", "images", "lesions", *SUBGROUP_METRICS, "flags"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines.append(line("all", "all", section["all"]))
    for attribute, entry in section["attributes"].items():
        if not entry["available"]:
            blanks = " | " * (len(columns) - 2)
            lines.append(f"| {attribute}{blanks}unavailable: {entry['reason']} |")
            continue
        lines += [line(attribute, name, g) for name, g in entry["groups"].items()]
    return "\n".join(lines)
