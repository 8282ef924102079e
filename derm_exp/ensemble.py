r"""Ensemble entrypoint: ``python -m derm_exp.ensemble [group= | tags.K= | filter= | models=]``.

Research and education only: not a medical device. Examples::

    python -m derm_exp.ensemble group=2026-11-22/11-43-16          # all runs of one seed sweep
    python -m derm_exp.ensemble tags.backbone=tf_efficientnetv2_s top_k=3 aggregation=weighted_mean
    python -m derm_exp.ensemble "filter=\"tags.head = 'ACRNNHead'\"" tta=medium
    python -m derm_exp.ensemble 'models=[models:/derm-classifier/3,models:/derm-classifier@seed-7]'

Selects registered versions, refuses members with different classes or data splits, evaluates
every member and the ensemble on the members' shared test split, prints a table and logs an
MLflow run tagged ``derm_exp.kind=ensemble_evaluation`` (members in tags, params and
``members.json``). ``register=true`` also registers the ensemble as ``derm-ensemble``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from derm_exp.config import run_hydra_main

log = logging.getLogger("derm_exp.ensemble")
KIND = "ensemble_evaluation"


def _split_frame(member: Any, split: str, tracking_uri: str):
    """The member's saved split (a run artifact, or the ``splits/`` folder beside it)."""
    from derm_exp.data.splits import load_split_csv
    from derm_exp.errors import RegistryError
    from derm_exp.inference.sources import run_artifact

    if split not in ("test", "val"):
        raise RegistryError(f"split={split!r}: choose test or val")
    local = member.checkpoint.parent / "splits" / f"{split}.csv"
    if member.model_version is None and local.is_file():
        path = local
    elif member.run_id is not None:
        path = run_artifact(member.run_id, f"splits/{split}.csv", tracking_uri)
    else:
        raise RegistryError(
            f"{member.name}: no run id and no {local}: cannot find its {split} split"
        )
    frame = load_split_csv(path)
    missing = [p for p in frame["path"] if not Path(p).is_file()]
    if missing:
        raise RegistryError(
            f"{len(missing)} of {len(frame)} {split} images of {member.name} are missing "
            f"(e.g. {missing[0]}); evaluate on the machine that holds the training data"
        )
    return frame


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


def run_ensemble(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Build, evaluate and log the configured ensemble; return its metrics and run id."""
    import json

    import mlflow
    import numpy as np
    import pandas as pd

    from derm_exp.evaluation.metrics import classification_metrics
    from derm_exp.evaluation.report import evaluate_predictions, log_evaluation
    from derm_exp.inference.ensemble import EnsemblePredictor, select_members
    from derm_exp.inference.tta import preset_from_config
    from derm_exp.tracking.mlflow_run import run_url_hint, setup_experiment

    output_dir = Path(output_dir)
    experiment_id = setup_experiment(
        cfg.tracking.uri, cfg.tracking.experiment_name, cfg.tracking.artifact_root
    )
    tags = {
        k: v for k, v in OmegaConf.to_container(cfg.tags, resolve=True).items() if v is not None
    }
    members = select_members(
        cfg.registry_name,
        models=list(cfg.models or []),
        group=cfg.group,
        tags=tags,
        filter=cfg.filter,
        top_k=cfg.top_k,
        rank_by=cfg.rank_by,
        download_dir=output_dir / "members",
    )
    ensemble = EnsemblePredictor.from_members(
        members,
        cfg.aggregation,
        cfg.rank_by,
        float(cfg.tau),
        device=cfg.device,
        calibrate=bool(cfg.calibrate),
    )
    preset = preset_from_config(cfg.tta)
    split = str(cfg.split)
    frame = _split_frame(members[0], split, cfg.tracking.uri)
    print(
        f"Ensemble of {len(members)} model(s), {cfg.aggregation}, TTA {preset.mode}: "
        f"{len(frame)} {split} images"
    )

    member_probs = ensemble.member_probabilities(
        frame["path"].tolist(), preset, int(cfg.batch_size), progress=True
    )
    out = ensemble.combine(member_probs)
    y = frame["label"].to_numpy()
    classes = ensemble.classes
    member_metrics = [classification_metrics(y, p, classes) for p in member_probs]
    result = evaluate_predictions(
        y, out.probs, classes, groups=frame["lesion_id"].tolist(), n_boot=int(cfg.n_boot)
    )
    unc = out.uncertainty()
    rank_key = str(cfg.rank_by).replace("/", "_")
    described = [
        {
            **m.describe(),
            "weight": float(w),
            f"{split}_balanced_accuracy": mm["balanced_accuracy"],
            f"{split}_macro_auc": mm["macro_auc"],
        }
        for m, w, mm in zip(members, out.weights, member_metrics, strict=True)
    ]
    groups = {m.tags.get("group") for m in members}
    group = groups.pop() if len(groups) == 1 else None

    run_name = cfg.run_name or f"ensemble-{group or len(members)}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=str(run_name)) as run:
        mlflow.set_tags(
            {
                "derm_exp.kind": KIND,
                "derm_exp.members": ",".join(m.name for m in members),
                "derm_exp.member_runs": ",".join(m.run_id or "" for m in members),
                "data_fingerprint": members[0].data_fingerprint or "",
                **({"group": group} if group else {}),
                "mlflow.note.content": "Ensemble evaluation. Research/education only: "
                "not a medical device.",
            }
        )
        mlflow.log_params(
            {
                "aggregation": cfg.aggregation,
                "tau": cfg.tau,
                "rank_by": cfg.rank_by,
                "tta": preset.mode,
                "tta_views": ",".join(preset.views),
                "split": split,
                "calibrate": cfg.calibrate,
                "n_members": len(members),
                "query": json.dumps(
                    {
                        "models": list(cfg.models or []),
                        "group": cfg.group,
                        "tags": tags,
                        "filter": cfg.filter,
                        "top_k": cfg.top_k,
                    }
                ),
                **{f"member_{i}": m.name for i, m in enumerate(members)},
                **{f"member_{i}_run_id": m.run_id for i, m in enumerate(members)},
                **{f"member_{i}_weight": f"{w:.6f}" for i, w in enumerate(out.weights)},
            }
        )
        mlflow.log_dict(
            {
                "members": described,
                "aggregation": cfg.aggregation,
                "tau": cfg.tau,
                "rank_by": cfg.rank_by,
            },
            "members.json",
        )
        extra = {
            f"member_{i}/{split}_{k}": float(mm[k])
            for i, mm in enumerate(member_metrics)
            for k in ("balanced_accuracy", "macro_f1", "macro_auc", "nll")
            if mm.get(k) is not None
        }
        extra.update({f"{split}/mean_{k}": float(np.mean(v)) for k, v in unc.items()})
        extra[f"{split}/member_mean_balanced_accuracy"] = float(
            np.mean([mm["balanced_accuracy"] for mm in member_metrics])
        )
        flat = log_evaluation(
            result,
            out.probs,
            y,
            classes,
            f"{split}/",
            output_dir=output_dir / "evaluation",
            artifact_dir="evaluation",
            extra_metrics=extra,
            title=f"Ensemble ({split})",
            json_payload={**result, "members": described},
        )
        predictions = pd.DataFrame(out.probs, columns=classes)
        predictions.insert(0, "image_id", frame["image_id"].to_numpy())
        predictions.insert(1, "label", frame["dx"].to_numpy())
        predictions.insert(2, "predicted", [classes[k] for k in out.predicted])
        for key, values in unc.items():
            predictions[key] = values
        predictions.to_csv(output_dir / "predictions.csv", index=False)
        mlflow.log_artifact(str(output_dir / "predictions.csv"), "evaluation")
        registered = None
        if cfg.register:
            registered = _register_ensemble(cfg, members, out.weights, result, split)
        run_id = run.info.run_id

    label = f"ENSEMBLE ({cfg.aggregation}, {len(members)})"
    print(_members_table(members, member_metrics, result, rank_key, label, split))
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
    return {
        "run_id": run_id,
        "metrics": flat,
        "members": described,
        "registered_version": None if registered is None else registered.version,
    }


def _register_ensemble(cfg: DictConfig, members, weights, result: dict, split: str):
    """Log the ensemble as one pyfunc model in the active run and register it."""
    import json
    import tempfile

    import mlflow

    from derm_exp.errors import RegistryError
    from derm_exp.inference.pyfunc_model import DermEnsembleModel, log_pyfunc_model

    spec = {
        "names": [m.name for m in members],
        "aggregation": str(cfg.aggregation),
        "weights": [float(w) for w in weights] if cfg.aggregation == "weighted_mean" else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "ensemble.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        artifacts = {"ensemble": str(spec_path)}
        artifacts.update({f"member_{i}": str(m.checkpoint) for i, m in enumerate(members)})
        info = log_pyfunc_model(DermEnsembleModel, artifacts, "ensemble_model")
    tags = {
        "kind": "ensemble",
        "aggregation": str(cfg.aggregation),
        "members": ",".join(m.name for m in members),
        "classes": ",".join(members[0].classes),
        "data_fingerprint": members[0].data_fingerprint or "",
        f"{split}_balanced_accuracy": repr(float(result["balanced_accuracy"])),
    }
    if members[0].tags.get("group"):
        tags["group"] = members[0].tags["group"]
    try:
        return mlflow.register_model(info.model_uri, str(cfg.ensemble_name), tags=tags)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"registering the ensemble failed: {exc.message}") from exc


@hydra.main(version_base="1.3", config_path="../conf", config_name="ensemble")
def main(cfg: DictConfig) -> None:
    """Build, evaluate and log one ensemble."""
    import os

    from derm_exp.errors import report_user_errors  # heavy imports happen after --help

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours is enough
    with report_user_errors():
        run_ensemble(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    run_hydra_main(main, "ensemble")
