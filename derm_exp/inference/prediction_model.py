"""The model a prediction names: one classifier, or an ensemble of several.

Research and education only: not a medical device; never use it for diagnosis.

``derm_exp.predict`` accepts

* ``model=<ref>``: a checkpoint (or its output folder), an MLflow run id or a ``models:/`` URI
  of one classifier (:class:`~derm_exp.inference.predictor.SkinLesionPredictor`);
* ``model=[ref1,ref2,...]``: an ensemble of such references;
* ``group=<sweep id>``: an ensemble of the registered versions of one sweep, selected like
  ``derm_exp.ensemble group=...`` selects them;
* ``model=models:/derm-ensemble/N``: an ensemble registered by ``derm_exp.ensemble
  register=true`` (its members' checkpoints are the model's artifacts).

Every ensemble is an :class:`~derm_exp.inference.ensemble.EnsemblePredictor`. References are
parsed once (:func:`derm_exp.tracking.model_refs.parse_selection`) and load the files
:mod:`derm_exp.inference.sources` names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from derm_exp.errors import ModelSourceError, PredictionInputError
from derm_exp.inference.aggregation import DEFAULT_TAU
from derm_exp.inference.ensemble import EnsemblePredictor
from derm_exp.inference.members import DEFAULT_RANK_BY, member_from_checkpoint, select_members
from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.inference.sources import default_tracking_uri
from derm_exp.tracking.model_refs import ModelRef, parse_selection


@dataclass
class PredictionModel:
    """A loaded classifier or ensemble, and how to name it in reports."""

    model: SkinLesionPredictor | EnsemblePredictor
    description: str

    @property
    def is_ensemble(self) -> bool:
        return isinstance(self.model, EnsemblePredictor)


def load_prediction_model(
    refs: Sequence[str],
    group: str | None = None,
    *,
    registry_name: str = "derm-classifier",
    aggregation: str | None = None,
    rank_by: str = DEFAULT_RANK_BY,
    tau: float = DEFAULT_TAU,
    tracking_uri: str | None = None,
    device: str = "auto",
    calibrate: bool = True,
    amp: str = "off",
    compile: bool = False,
    backend: str = "torch",
    backend_threads: int | None = None,
    quantize: str | None = None,
) -> PredictionModel:
    """Load what ``refs`` / ``group`` name (see the module docstring).

    ``aggregation`` (mean | weighted_mean | geometric_mean) combines ensemble members; None means
    mean, or a registered ensemble's own aggregation (and weights). ``backend`` (torch |
    onnxruntime), ``backend_threads`` and ``quantize`` apply to every member
    (:mod:`derm_exp.inference.backends`).
    """
    tracking_uri = tracking_uri or default_tracking_uri()
    parsed = parse_selection(list(refs), group)
    options = {"device": device, "calibrate": calibrate, "amp": amp, "compile": compile}
    options |= {"backend": backend, "backend_threads": backend_threads, "quantize": quantize}
    if group is None and len(parsed) == 1:
        registered = _registered_ensemble(parsed[0], tracking_uri)
        if registered is not None:
            _use_tracking_uri(tracking_uri)
            return _registered(parsed[0].text, registered, aggregation, rank_by, tau, options)
        if aggregation is not None:
            raise PredictionInputError(
                f"aggregation={aggregation} combines the members of an ensemble, and "
                f"model={parsed[0].text} is one model (views of tta=... combine with "
                "tta.aggregation=...)"
            )
        predictor = SkinLesionPredictor.from_ref(parsed[0].text, tracking_uri, **options)
        return PredictionModel(predictor, describe_predictor(predictor))

    _use_tracking_uri(tracking_uri)
    if group is not None:
        members = select_members(registry_name, group=str(group), rank_by=rank_by)
        where = f"group {group}: "
    else:
        for ref in parsed:
            if _registered_ensemble(ref, tracking_uri) is not None:
                raise ModelSourceError(
                    f"model=[...]: {ref.text} is itself an ensemble; give it alone "
                    f"(model={ref.text}) or list its members"
                )
        members = select_members(registry_name, models=parsed, rank_by=rank_by)
        where = ""
    ensemble = EnsemblePredictor.from_members(
        members, aggregation or "mean", rank_by, tau, **options
    )
    names = ", ".join(m.name for m in members)
    return PredictionModel(
        ensemble, f"ensemble of {len(members)} ({where}{names}; {ensemble.aggregation})"
    )


def load_from_config(refs: Sequence[str], cfg: Any) -> PredictionModel:
    """:func:`load_prediction_model` with the model options of an app's config
    (conf/predict.yaml and conf/serve.yaml share them: group, registry_name, aggregation,
    rank_by, tau, tracking.uri, device, calibrate, amp, compile, backend, backend_threads,
    quantize)."""

    def text(key: str) -> str | None:
        return None if cfg.get(key) is None else str(cfg[key])

    return load_prediction_model(
        refs,
        text("group"),
        registry_name=str(cfg.registry_name),
        aggregation=text("aggregation"),
        rank_by=str(cfg.rank_by),
        tau=float(cfg.tau),
        tracking_uri=cfg.tracking.uri,
        device=cfg.device,
        calibrate=bool(cfg.calibrate),
        amp=str(cfg.amp),
        compile=bool(cfg.compile),
        backend=str(cfg.backend),
        backend_threads=None if cfg.backend_threads is None else int(cfg.backend_threads),
        quantize=text("quantize"),
    )


def _registered_ensemble(ref: ModelRef, tracking_uri: str) -> Any | None:
    """The model version when ``ref`` is a ``models:/`` URI of a registered ensemble."""
    if ref.kind != "registry":
        return None
    from derm_exp.tracking.model_lookup import is_registered_ensemble, resolve_version

    version = resolve_version(ref, tracking_uri)
    return version if is_registered_ensemble(version) else None


def _registered(
    ref: str,
    version: Any,
    aggregation: str | None,
    rank_by: str,
    tau: float,
    options: dict[str, Any],
) -> PredictionModel:
    """An :class:`EnsemblePredictor` from a registered ensemble's own artifacts."""
    from derm_exp.inference.pyfunc_model import ensemble_spec, model_artifacts
    from derm_exp.tracking.model_lookup import model_dir

    artifacts = model_artifacts(model_dir(version))
    if "ensemble" not in artifacts:
        raise ModelSourceError(
            f"model={ref}: tagged an ensemble, but its model has no ensemble.json"
        )
    spec = ensemble_spec(artifacts)
    members = [
        member_from_checkpoint(path, name)
        for path, name in zip(spec.paths, spec.names, strict=True)
    ]
    aggregation = aggregation or spec.aggregation
    # The weights it was registered with, unless another aggregation is asked for.
    weights = spec.weights if aggregation == spec.aggregation == "weighted_mean" else None
    ensemble = EnsemblePredictor.from_members(
        members, aggregation, rank_by, tau, weights=weights, **options
    )
    names = ", ".join(spec.names)
    return PredictionModel(
        ensemble,
        f"{ref} (registered ensemble of {len(members)}: {names}; {ensemble.aggregation})",
    )


def describe_predictor(predictor: SkinLesionPredictor) -> str:
    """``ref (kind, run ...)`` of a single classifier."""
    source = predictor.source
    if source is None:
        return str(predictor.checkpoint_path)
    run = f", run {source.run_id}" if source.run_id and source.kind != "checkpoint" else ""
    return f"{source.ref} ({source.kind}{run})"


def _use_tracking_uri(uri: str) -> None:
    """Member lookups (runs, registry) go through MLflow's current tracking URI."""
    import mlflow

    mlflow.set_tracking_uri(uri)
