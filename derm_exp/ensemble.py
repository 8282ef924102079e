r"""Ensemble entrypoint: ``python -m derm_exp.ensemble [group= | tags.K= | filter= | models=]``.

Research and education only: not a medical device. Examples::

    python -m derm_exp.ensemble group=2026-11-22/11-43-16          # all runs of one seed sweep
    python -m derm_exp.ensemble tags.backbone=tf_efficientnetv2_s top_k=3 aggregation=weighted_mean
    python -m derm_exp.ensemble "filter=\"tags.head = 'acrnn'\"" tta=medium
    python -m derm_exp.ensemble 'models=[models:/derm-classifier/3,models:/derm-classifier@seed-7]'

Selects registered versions, refuses members with different classes or data splits, evaluates
every member and the ensemble on the members' shared test split, prints a table and logs an
MLflow run tagged ``derm_exp.kind=ensemble_evaluation`` (members in tags, params and
``members.json``). ``register=true`` also registers the ensemble as ``derm-ensemble``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from derm_exp.config import run_hydra_main
from derm_exp.ensemble_report import KIND as KIND  # re-exported: the run's derm_exp.kind tag
from derm_exp.ensemble_report import (
    EnsembleScores,
    log_ensemble_run,
    print_report,
    shared_group,
)

if TYPE_CHECKING:
    import pandas as pd

    from derm_exp.inference.ensemble import EnsemblePredictor
    from derm_exp.inference.members import Member
    from derm_exp.inference.tta import TTAPreset

log = logging.getLogger("derm_exp.ensemble")


def run_ensemble(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Build, evaluate and log the configured ensemble; return its metrics and run id."""
    import mlflow

    from derm_exp.inference.tta import preset_from_config
    from derm_exp.tracking.mlflow_run import setup_experiment

    output_dir = Path(output_dir)
    experiment_id = setup_experiment(
        cfg.tracking.uri, cfg.tracking.experiment_name, cfg.tracking.artifact_root
    )
    query = _query(cfg)
    members = _select_members(cfg, query, output_dir)
    ensemble = _load_ensemble(cfg, members)
    preset = preset_from_config(cfg.tta)
    split = str(cfg.split)
    frame = _split_frame(members[0], split, cfg.tracking.uri)
    print(
        f"Ensemble of {len(members)} model(s), {cfg.aggregation}, TTA {preset.mode}: "
        f"{len(frame)} {split} images"
    )
    scores = _score(cfg, ensemble, members, frame, preset)

    run_name = cfg.run_name or f"ensemble-{shared_group(members) or len(members)}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=str(run_name)) as run:
        flat = log_ensemble_run(cfg, query, members, scores, preset, output_dir)
        registered = _register_ensemble(cfg, members, scores) if cfg.register else None
        run_id = run.info.run_id

    print_report(cfg, members, scores, run_id, registered)
    return {
        "run_id": run_id,
        "metrics": flat,
        "members": scores.described,
        "registered_version": None if registered is None else registered.version,
    }


def _query(cfg: DictConfig) -> dict[str, Any]:
    """Which models to ensemble: explicit ``models``, or the registry query (logged as given)."""
    tags = {
        k: v for k, v in OmegaConf.to_container(cfg.tags, resolve=True).items() if v is not None
    }
    return {
        "models": list(cfg.models or []),
        "group": cfg.group,
        "tags": tags,
        "filter": cfg.filter,
        "top_k": cfg.top_k,
    }


def _select_members(cfg: DictConfig, query: dict[str, Any], output_dir: Path) -> list[Member]:
    """The members (downloaded under ``output_dir/members``), refused unless they share their
    class list and data split (``select_members`` checks both)."""
    from derm_exp.inference.members import select_members

    return select_members(
        cfg.registry_name,
        **query,
        rank_by=cfg.rank_by,
        download_dir=output_dir / "members",
    )


def _load_ensemble(cfg: DictConfig, members: list[Member]) -> EnsemblePredictor:
    """Every member's network, with ``weighted_mean`` weights from the members' ``rank_by``."""
    from derm_exp.inference.ensemble import EnsemblePredictor

    return EnsemblePredictor.from_members(
        members,
        cfg.aggregation,
        cfg.rank_by,
        float(cfg.tau),
        device=cfg.device,
        calibrate=bool(cfg.calibrate),
        **_backend_options(cfg),
    )


def _backend_options(cfg: DictConfig) -> dict[str, Any]:
    """``backend`` / ``backend_threads`` / ``quantize`` (see derm_exp.inference.backends)."""
    threads = cfg.get("backend_threads")
    return {
        "backend": str(cfg.get("backend", "torch")),
        "backend_threads": None if threads is None else int(threads),
        "quantize": None if cfg.get("quantize") is None else str(cfg.quantize),
    }


def _split_frame(member: Member, split: str, tracking_uri: str) -> pd.DataFrame:
    """The member's saved split (a run artifact, or the ``splits/`` folder beside it)."""
    from derm_exp.data.splits import load_split_csv
    from derm_exp.errors import RegistryError
    from derm_exp.tracking.model_lookup import run_artifact

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


def _score(
    cfg: DictConfig,
    ensemble: EnsemblePredictor,
    members: list[Member],
    frame: pd.DataFrame,
    preset: TTAPreset,
) -> EnsembleScores:
    """Every member's and the ensemble's predictions and metrics on the split in ``frame``."""
    from derm_exp.evaluation.metrics import classification_metrics
    from derm_exp.evaluation.report import evaluate_predictions

    split = str(cfg.split)
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
    described = [
        {
            **m.describe(),
            "weight": float(w),
            f"{split}_balanced_accuracy": mm["balanced_accuracy"],
            f"{split}_macro_auc": mm["macro_auc"],
        }
        for m, w, mm in zip(members, out.weights, member_metrics, strict=True)
    ]
    return EnsembleScores(
        split, frame, classes, out, member_metrics, result, out.uncertainty(), described
    )


def _register_ensemble(cfg: DictConfig, members: list[Member], scores: EnsembleScores) -> Any:
    """Register the ensemble (logged in the active run) as ``cfg.ensemble_name``."""
    from derm_exp.training.registration import register_ensemble

    aggregation = str(cfg.aggregation)
    weights = [float(w) for w in scores.out.weights] if aggregation == "weighted_mean" else None
    metric = f"{scores.split}_balanced_accuracy"
    return register_ensemble(
        str(cfg.ensemble_name),
        members,
        aggregation,
        weights,
        {metric: repr(float(scores.result["balanced_accuracy"]))},
    )


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
