"""What ``python -m derm_exp.evaluate`` writes, logs and prints.

:func:`write_predictions` writes ``predictions.csv``; :func:`report` writes the report
(``evaluation_metrics.json``, ``plots/``), logs it to its own MLflow run
(:func:`log_to_mlflow`; see :mod:`derm_exp.evaluate` for what that run holds) and prints the
summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("derm_exp.evaluate")
DISCLAIMER = "Research and education only; not a medical device. Do not use for diagnosis."


@dataclass
class Predictions:
    """What the evaluated model gave: true labels, probabilities before and after temperature
    scaling, and the sample ids (images, or lesions with ``lesion_level=true``)."""

    y: Any
    probs: Any
    calibrated: Any
    ids: Any
    groups: Any  # lesion id per image (None: no lesion ids, or one sample per lesion)


def write_predictions(path: Path, p: Predictions, classes: list[str], lesion_level: bool) -> Path:
    """One row per evaluated sample (image, or lesion): its id (and lesion), true and predicted
    class, probabilities before (``prob_<class>``) and after (``prob_calibrated_<class>``)
    temperature scaling."""
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"lesion_id" if lesion_level else "image_id": p.ids})
    if not lesion_level and p.groups is not None:
        table["lesion_id"] = p.groups
    table["label"] = [classes[i] for i in p.y]
    table["predicted"] = [classes[i] for i in np.argmax(p.probs, 1)]
    for i, c in enumerate(classes):
        table[f"prob_{c}"] = p.probs[:, i]
    for i, c in enumerate(classes):
        table[f"prob_calibrated_{c}"] = p.calibrated[:, i]
    table.to_csv(path, index=False)
    return path


def describe_model(cfg: DictConfig, source: Any, loaded: Any) -> dict[str, Any]:
    """The report's ``model`` entry: the reference and what it resolved to."""
    return {
        "ref": str(cfg.model_ref),
        "kind": source.kind,
        "run_id": source.run_id,
        "model_version": source.model_version,
        "checkpoint": str(source.checkpoint),
        "backbone": loaded.config.get("model", {}).get("name"),
        # Patient metadata: none (image-only model) | auto (the data's own) | withheld.
        "metadata": str(cfg.get("metadata", "auto")) if loaded.metadata_encoder else "none",
        **_backend_entry(loaded.model),
    }


def _backend_entry(model: Any) -> dict[str, Any]:
    """What ran the network: ``backend`` (torch | onnxruntime) and, for ONNX Runtime, the file,
    its precision and whether it is approximate (int8)."""
    name = getattr(model, "name", "torch")
    if name != "onnxruntime":
        return {"backend": "torch"}
    return {
        "backend": name,
        "onnx": str(model.path),
        "precision": model.metadata.get("precision"),
        "approximate": bool(model.approximate),
    }


def subgroup_section(
    cfg: DictConfig, frame: Any, p: Predictions, loaded: Any
) -> dict[str, Any] | None:
    """Per sex, age band and body site (:mod:`derm_exp.evaluation.subgroup_report`), on the
    calibrated probabilities. ``subgroups.metadata_file``, when given, supplies the patient
    columns; otherwise those the evaluated rows lack are joined from the training run's dataset
    (its config's data.root). None with ``subgroups.enabled=false``."""
    from derm_exp.data.metadata_join import metadata_csv_for, with_patient_metadata
    from derm_exp.evaluation.subgroup_report import subgroup_report

    settings = cfg.get("subgroups") or {}
    explicit = settings.get("metadata_file")
    csv = explicit or metadata_csv_for(loaded.config.get("data") or {})
    return subgroup_report(
        with_patient_metadata(frame, csv, replace=bool(explicit)),
        p.y,
        p.calibrated,
        loaded.classes,
        settings=settings,
        bootstrap=cfg.bootstrap,
        lesion_level=bool(cfg.lesion_level),
        n_bins=int(cfg.n_bins),
    )


def report(
    cfg: DictConfig,
    result: dict[str, Any],
    predictions: Predictions,
    classes: list[str],
    source: Any,
    output_dir: Path,
) -> None:
    """Write the report (and log it to its own MLflow run), then print a summary."""
    from derm_exp.evaluation.report import log_evaluation
    from derm_exp.evaluation.subgroup_report import gaps_line

    probs, calibrated, y = predictions.probs, predictions.calibrated, predictions.y

    prefix = "eval_lesion/" if cfg.lesion_level else "eval/"
    extra = {
        f"{prefix}temperature": result["temperature"]["value"],
        **abstain_metrics(result, prefix),
    }
    kwargs = dict(
        calibrated_probs=calibrated,
        output_dir=output_dir,
        extra_metrics=extra,
        title=f"Evaluation ({result['data']})",
    )
    run_id = None
    if cfg.tracking.enabled:
        run_id = log_to_mlflow(
            cfg,
            result,
            source,
            output_dir,
            lambda: log_evaluation(result, probs, y, classes, prefix, **kwargs),
        )
    else:
        log_evaluation(result, probs, y, classes, prefix, **kwargs)
    ci = result.get("bootstrap", {}).get("intervals", {})

    def with_ci(name: str) -> str:
        value = result[name]
        if value is None:
            return "n/a"
        c = ci.get(name, {})
        band = f" [{c['low']:.3f}, {c['high']:.3f}]" if c.get("low") is not None else ""
        return f"{value:.4f}{band}"

    cal = result["calibrated"]
    print(
        f"\nEvaluated {result['n_samples']} {result['level']}s ({result['data']}), "
        f"TTA {result['tta']['mode']}"
    )
    print(f"  balanced accuracy {with_ci('balanced_accuracy')}   accuracy {with_ci('accuracy')}")
    print(f"  macro-F1 {with_ci('macro_f1')}   macro AUC {with_ci('macro_auc')}")
    print(
        f"  ECE {result['ece']:.4f} -> {cal['ece']:.4f}   NLL {result['nll']:.4f} -> "
        f"{cal['nll']:.4f}  (temperature {result['temperature']['value']:.3f})"
    )
    print("  " + selective_line(result))
    if gaps_line(result.get("subgroups")):
        print(f"  {gaps_line(result['subgroups'])} (subgroups.csv, plots/subgroups.png)")
    if result["absent_classes"]:
        print(f"  absent classes: {', '.join(result['absent_classes'])}")
    print(f"  report: {output_dir / 'evaluation_metrics.json'}")
    if run_id:
        print(f"  MLflow evaluation run: {run_id}")
    print(f"  {DISCLAIMER}")


def abstain_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """``<prefix>abstain_coverage``/``_risk``/``_balanced_accuracy``/``_threshold`` of the
    checkpoint's threshold on the evaluated data (none without a threshold)."""
    stored = result.get("abstention") or {}
    on = dict(stored.get("on_data") or {})
    values = {k: on.get(k) for k in ("coverage", "risk", "balanced_accuracy", "threshold")}
    return {f"{prefix}abstain_{k}": float(v) for k, v in values.items() if v is not None}


def selective_line(result: dict[str, Any]) -> str:
    """``AURC .. E-AURC ..; bal. acc. at 90 % coverage ..; abstention threshold ..``."""
    sel = result["selective"]
    at = ", ".join(
        f"{p['target']:.0%} coverage {p['balanced_accuracy']:.4f}"
        for p in sel["at_coverage"].values()
        if p["balanced_accuracy"] is not None
    )
    line = f"AURC {sel['aurc']:.4f}  E-AURC {sel['eaurc']:.4f}  selective balanced accuracy: {at}"
    stored = result.get("abstention")
    if stored:
        on = stored["on_data"]
        risk = "n/a" if on["risk"] is None else f"{on['risk']:.4f}"
        line += (
            f"\n  abstention threshold {stored['threshold']:.4f} (fitted on validation for "
            f"{stored['target']}): coverage {on['coverage']:.3f}, risk {risk} here"
        )
    return line


def log_to_mlflow(
    cfg: DictConfig, result: dict, source: Any, output_dir: Path, log_report: Any
) -> str:
    """Open the evaluation run (see the module docstring), log params/tags, then the report."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from derm_exp.tracking.mlflow_run import mask_credentials, setup_experiment

    mlflow.set_tracking_uri(cfg.tracking.uri)
    client = MlflowClient()
    source_run = None
    if source.run_id:
        try:
            source_run = client.get_run(source.run_id)
        except mlflow.exceptions.MlflowException:
            log.info("checkpoint run %s is not in this tracking store", source.run_id)
    if source_run is not None:
        experiment_id = source_run.info.experiment_id
        name = source_run.info.run_name or source.run_id[:8]
    else:
        experiment_id = setup_experiment(
            cfg.tracking.uri, cfg.tracking.experiment_name, cfg.tracking.artifact_root
        )
        name = Path(source.checkpoint).parent.name
    tags = {
        "derm_exp.kind": "evaluation",
        "derm_exp.source_kind": source.kind,
        "derm_exp.source_ref": mask_credentials(str(cfg.model_ref)),
        "derm_exp.eval_data": result["data"],
        "derm_exp.eval_level": result["level"],
        "backbone": str(result["model"]["backbone"]),
        "mlflow.note.content": DISCLAIMER,
        **OmegaConf.to_container(cfg.tracking.tags, resolve=True),
    }
    if source_run is not None:
        tags["derm_exp.source_run"] = source.run_id
    if source.model_version:
        tags["derm_exp.model_version"] = source.model_version
    params = {
        "model_ref": mask_credentials(str(cfg.model_ref)),
        "data": result["data"],
        "lesion_level": bool(cfg.lesion_level),
        "tta.mode": result["tta"]["mode"],
        "tta.views": ",".join(result["tta"]["views"]),
        "tta.aggregation": result["tta"]["aggregation"],
        "temperature.mode": str(cfg.temperature),
        "temperature.source": result["temperature"]["source"],
        "bootstrap.n_boot": int(cfg.bootstrap.n_boot),
        "n_samples": result["n_samples"],
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"eval-{name}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params(params)
        log_report()
        mlflow.log_artifact(str(output_dir / "predictions.csv"))
        return run.info.run_id
