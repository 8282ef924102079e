"""What ``python -m derm_exp.ensemble`` reports: its MLflow run and the printed summary.

:class:`EnsembleScores` holds one evaluation of an ensemble and its members on one saved split
(computed by :mod:`derm_exp.ensemble`). :func:`log_ensemble_run` logs it to the active MLflow
run: tags ``derm_exp.kind=ensemble_evaluation`` and the members, params (aggregation, TTA,
query, members and their weights), ``members.json``, the ensemble's and every member's metrics,
the evaluation plots and ``evaluation/predictions.csv``. :func:`print_report` prints the
members table and the run's address.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from derm_exp.inference.ensemble import EnsembleOutput
    from derm_exp.inference.members import Member
    from derm_exp.inference.tta import TTAPreset

KIND = "ensemble_evaluation"
MEMBER_METRICS = ("balanced_accuracy", "macro_f1", "macro_auc", "nll")


@dataclass
class EnsembleScores:
    """The ensemble and its members evaluated on one split of the members' shared data."""

    split: str  # test | val
    frame: pd.DataFrame  # the split's rows (image_id, path, dx, label, lesion_id, ...)
    classes: list[str]
    out: EnsembleOutput  # member and ensemble probabilities, member weights
    member_metrics: list[dict[str, Any]]  # classification_metrics of each member
    result: dict[str, Any]  # evaluate_predictions of the ensemble (bootstrap CIs by lesion)
    uncertainty: dict[str, np.ndarray]  # per image: std, entropy, mutual information, ...
    described: list[dict[str, Any]]  # each member's describe() + weight + split scores


def shared_group(members: list[Member]) -> str | None:
    """The members' ``group`` tag when they all share one (one sweep), else None."""
    groups = {m.tags.get("group") for m in members}
    return groups.pop() if len(groups) == 1 else None


def log_ensemble_run(
    cfg: DictConfig,
    query: dict[str, Any],
    members: list[Member],
    scores: EnsembleScores,
    preset: TTAPreset,
    output_dir: Path,
) -> dict[str, float]:
    """Log everything about the evaluation to the active MLflow run; return its metrics."""
    import mlflow

    from derm_exp.evaluation.report import log_evaluation

    split = scores.split
    mlflow.set_tags(_run_tags(members))
    mlflow.log_params(_run_params(cfg, query, members, scores, preset))
    mlflow.log_dict(
        {
            "members": scores.described,
            "aggregation": cfg.aggregation,
            "tau": cfg.tau,
            "rank_by": cfg.rank_by,
        },
        "members.json",
    )
    flat = log_evaluation(
        scores.result,
        scores.out.probs,
        scores.frame["label"].to_numpy(),
        scores.classes,
        f"{split}/",
        output_dir=output_dir / "evaluation",
        artifact_dir="evaluation",
        extra_metrics=_member_and_uncertainty_metrics(scores),
        title=f"Ensemble ({split})",
        json_payload={**scores.result, "members": scores.described},
    )
    predictions = _write_predictions(scores, output_dir / "predictions.csv")
    mlflow.log_artifact(str(predictions), "evaluation")
    return flat


def _run_tags(members: list[Member]) -> dict[str, str]:
    group = shared_group(members)
    return {
        "derm_exp.kind": KIND,
        "derm_exp.members": ",".join(m.name for m in members),
        "derm_exp.member_runs": ",".join(m.run_id or "" for m in members),
        "data_fingerprint": members[0].data_fingerprint or "",
        **({"group": group} if group else {}),
        "mlflow.note.content": "Ensemble evaluation. Research/education only: "
        "not a medical device.",
    }


def _run_params(
    cfg: DictConfig,
    query: dict[str, Any],
    members: list[Member],
    scores: EnsembleScores,
    preset: TTAPreset,
) -> dict[str, Any]:
    return {
        "aggregation": cfg.aggregation,
        "tau": cfg.tau,
        "rank_by": cfg.rank_by,
        "tta": preset.mode,
        "tta_views": ",".join(preset.views),
        "split": scores.split,
        "calibrate": cfg.calibrate,
        "n_members": len(members),
        "query": json.dumps(query),
        **{f"member_{i}": m.name for i, m in enumerate(members)},
        **{f"member_{i}_run_id": m.run_id for i, m in enumerate(members)},
        **{f"member_{i}_weight": f"{w:.6f}" for i, w in enumerate(scores.out.weights)},
    }


def _member_and_uncertainty_metrics(scores: EnsembleScores) -> dict[str, float]:
    """``member_<i>/<split>_<metric>``, the mean of each uncertainty and the members' mean BA."""
    import numpy as np

    split = scores.split
    extra = {
        f"member_{i}/{split}_{k}": float(mm[k])
        for i, mm in enumerate(scores.member_metrics)
        for k in MEMBER_METRICS
        if mm.get(k) is not None
    }
    extra.update({f"{split}/mean_{k}": float(np.mean(v)) for k, v in scores.uncertainty.items()})
    extra[f"{split}/member_mean_balanced_accuracy"] = float(
        np.mean([mm["balanced_accuracy"] for mm in scores.member_metrics])
    )
    return extra


def _write_predictions(scores: EnsembleScores, path: Path) -> Path:
    """One row per image: id, true and predicted class, class probabilities, uncertainty."""
    import pandas as pd

    classes, out, frame = scores.classes, scores.out, scores.frame
    predictions = pd.DataFrame(out.probs, columns=classes)
    predictions.insert(0, "image_id", frame["image_id"].to_numpy())
    predictions.insert(1, "label", frame["dx"].to_numpy())
    predictions.insert(2, "predicted", [classes[k] for k in out.predicted])
    for key, values in scores.uncertainty.items():
        predictions[key] = values
    predictions.to_csv(path, index=False)
    return path


def print_report(
    cfg: DictConfig,
    members: list[Member],
    scores: EnsembleScores,
    run_id: str,
    registered: Any = None,
) -> None:
    """The members table, the ensemble's CI and mean uncertainty, the run and registration."""
    from derm_exp.tracking.mlflow_run import run_url_hint

    split, result, unc = scores.split, scores.result, scores.uncertainty
    label = f"ENSEMBLE ({cfg.aggregation}, {len(members)})"
    rank_key = str(cfg.rank_by).replace("/", "_")
    print(_members_table(members, scores.member_metrics, result, rank_key, label, split))
    ci = result.get("bootstrap", {}).get("intervals", {}).get("balanced_accuracy")
    if ci:
        print(
            f"ensemble {split} balanced accuracy 95% CI (by lesion): "
            f"[{ci['low']:.4f}, {ci['high']:.4f}]"
        )
    print(
        f"mean uncertainty: entropy {unc['entropy'].mean():.4f}, mutual information "
        f"{unc['mutual_information'].mean():.4f}, disagreement {unc['disagreement'].mean():.4f}"
    )
    print(f"\nMLflow ensemble evaluation run: {run_id}\n  {run_url_hint(run_id)}")
    if registered is not None:
        print(f"  registered models:/{registered.name}/{registered.version}")
    print("Research and education only; not a medical device.")


def _members_table(
    members, member_metrics, ensemble_metrics, rank_key: str, label: str, split: str
) -> str:
    import pandas as pd

    rows = []
    for m, metrics in zip(members, member_metrics, strict=True):
        rows.append(
            {
                "member": m.name,
                "run": (m.run_id or "")[:8],
                "seed": m.tags.get("seed", ""),
                rank_key: m.val_metrics.get(rank_key, float("nan")),
                f"{split}_balanced_accuracy": metrics["balanced_accuracy"],
                f"{split}_macro_auc": metrics["macro_auc"],
            }
        )
    rows.append(
        {
            "member": label,
            "run": "",
            "seed": "",
            rank_key: float("nan"),
            f"{split}_balanced_accuracy": ensemble_metrics["balanced_accuracy"],
            f"{split}_macro_auc": ensemble_metrics["macro_auc"],
        }
    )
    frame = pd.DataFrame(rows).astype({f"{split}_macro_auc": float})
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")
