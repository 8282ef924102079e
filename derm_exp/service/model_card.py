"""``GET /model``: what the served model is, what it was trained and validated on, its limits.

Research and education only; not a medical device.

Everything comes from the model's own checkpoint(s) (:func:`checkpoint_metadata`): classes,
architecture, preprocessing, the training data's split fingerprint, the validation score it was
selected on, the calibration temperature, the logit adjustment folded into the weights (tau and
the training class mix it undoes; ``trainer.logit_adjustment``), when the checkpoint stores
one the abstention threshold, and whether the model takes patient metadata (its fields, the
values its stored encoder saw in training, how missing values count; see
:mod:`derm_exp.service.metadata`).
Test metrics live in the training run, so they are read from MLflow when the model was named
by run id or ``models:/`` URI (a checkpoint path has no store to ask).
"""

from __future__ import annotations

import logging
from typing import Any

from derm_exp.data.metadata import CLASS_DESCRIPTIONS
from derm_exp.inference.prediction_model import PredictionModel
from derm_exp.inference.predictor import DISCLAIMER, SkinLesionPredictor
from derm_exp.models.checkpoint import checkpoint_metadata, load_checkpoint
from derm_exp.service.metadata import metadata_card

log = logging.getLogger(__name__)
# Checkpoint keys under which selective prediction stores its abstention threshold.
ABSTENTION_KEYS = ("abstention", "abstain", "selective")


def model_card(loaded: PredictionModel) -> dict[str, Any]:
    """The model card of a loaded classifier or ensemble (JSON-friendly)."""
    model = loaded.model
    predictors = model.predictors if loaded.is_ensemble else [model]
    members = [_member_card(p) for p in predictors]
    card: dict[str, Any] = {
        "model": loaded.description,
        "kind": "ensemble" if loaded.is_ensemble else "classifier",
        "classes": [
            {"name": c, "description": CLASS_DESCRIPTIONS.get(c, c)} for c in model.classes
        ],
        "data_fingerprint": members[0]["data_fingerprint"],
        "calibration": {
            "calibrated": all(p.calibrate for p in predictors),
            "method": "temperature scaling fitted on the validation split",
            "temperature": [m["temperature"] for m in members]
            if loaded.is_ensemble
            else members[0]["temperature"],
        },
        "abstention": _policy(model, members),
        "metadata": _metadata(loaded, members),
        "disclaimer": DISCLAIMER,
    }
    if loaded.is_ensemble:
        card["ensemble"] = {
            "aggregation": model.aggregation,
            "weights": [float(w) for w in model.weights],
            "members": members,
        }
    else:
        card.update({k: v for k, v in members[0].items() if k not in card})
    return card


def _member_card(predictor: SkinLesionPredictor) -> dict[str, Any]:
    """One classifier's part of the card, from its checkpoint (tensors memory-mapped)."""
    path = predictor.checkpoint_path
    ck = load_checkpoint(path, mmap=True) if path is not None else {}
    meta = checkpoint_metadata(ck, path)
    source = predictor.source
    best = meta.best or {}
    return {
        "source": None if source is None else {"kind": source.kind, "ref": source.ref},
        "run_id": meta.run_id,
        "architecture": {
            "backbone": str((meta.config.get("model") or {}).get("name", "")),
            "choices": meta.choices,
            "input_size": list(meta.data_config.get("input_size", [])),
            "weights": meta.weights,
        },
        "data_fingerprint": meta.data_fingerprint,
        "validation": {
            "monitor": meta.monitor,
            "value": best.get("value"),
            "epoch": meta.epoch,
            "loss": best.get("loss"),
        },
        "test_metrics": _test_metrics(predictor),
        "temperature": float(predictor.temperature),
        # Offsets already in the weights (trainer.logit_adjustment): None when there are none.
        "logit_adjustment": _logit_adjustment(ck),
        "abstention": _abstention(ck),
    }


def _metadata(loaded: PredictionModel, members: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the model takes patient metadata, its inputs and how missing values count, with
    the fusion method(s) of the checkpoint(s) (``model/metadata``: none, concat, film)."""
    methods = [(m["architecture"]["choices"] or {}).get("model/metadata", "none") for m in members]
    card = metadata_card(loaded)
    return {**card, "method": methods if loaded.is_ensemble else methods[0]}


def _policy(model: Any, members: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The abstention policy the predictor applies (selective prediction), else what the
    checkpoint stores."""
    policy = getattr(model, "abstention", None)
    if policy is not None and hasattr(policy, "describe"):
        return dict(policy.describe())
    return members[0]["abstention"] if len(members) == 1 else None


def _abstention(ck: dict[str, Any]) -> dict[str, Any] | None:
    """The abstention threshold (and what it was fitted for) when the checkpoint has one."""
    for key in ABSTENTION_KEYS:
        value = ck.get(key)
        if value is not None:
            return dict(value) if isinstance(value, dict) else {"threshold": value}
    return None


def _test_metrics(predictor: SkinLesionPredictor) -> dict[str, float] | None:
    """The training run's ``test/*`` metrics, when its tracking store can be asked."""
    source = predictor.source
    if source is None or source.kind == "checkpoint" or not source.run_id:
        return None
    try:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=source.tracking_uri).get_run(source.run_id)
    except Exception as exc:  # noqa: BLE001 - the card is still useful without them
        log.warning("model card: no test metrics from run %s (%s)", source.run_id, exc)
        return None
    metrics = run.data.metrics
    return {
        k.removeprefix("test/"): float(v)
        for k, v in sorted(metrics.items())
        if k.startswith("test/")
    }


def _logit_adjustment(ck: dict) -> dict | None:
    """``tau`` and the training class mix of the checkpoint's logit adjustment, or None."""
    adjustment = ck.get("logit_adjustment")
    if not adjustment:
        return None
    return {"tau": adjustment["tau"], "training_prior": adjustment["training_prior"]}
