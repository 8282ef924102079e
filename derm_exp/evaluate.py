"""Evaluate a trained model: ``python -m derm_exp.evaluate model=<ref> [key=value ...]``.

Research and education only; not a medical device. Do not use for diagnosis.

``model`` is a ``checkpoint_best.pt`` (or its training output folder), an MLflow run id or a
registered model URI (``models:/NAME@alias``). The network, preprocessing and class list come
from the checkpoint's own saved config, never from the repository's config files.

Data: by default the split saved with the training run (``split=test``: the run's
``splits/test.csv`` artifact, or ``splits/`` beside a local checkpoint); or every image of a
HAM10000-format folder (``data.root=...``); or a split CSV (``split_csv=...``, absolute paths).

Temperature scaling is never fitted on the evaluated data: ``temperature=auto`` uses the
temperature stored in the checkpoint (fitted on the run's validation split at the end of
training), or fits one now on the run's validation split when the checkpoint has none;
``temperature=refit`` always fits on the run's validation split. Metrics are reported before
(main) and after (``*_calibrated``) scaling.

MLflow: every evaluation is a *separate* run in the training run's experiment (or
``tracking.experiment_name`` when the source run is unknown), tagged
``derm_exp.kind=evaluation`` and ``derm_exp.source_run=<training run id>``. It is not nested
under the training run and never writes to it, so re-evaluations (other data, TTA, lesion level)
cannot overwrite the training metrics. Its metrics are named ``eval/...`` (``eval_lesion/...``
with ``lesion_level=true``) so that searches ranking training runs by ``val/``/``test/`` metrics
never pick an evaluation run. ``tracking.enabled=false`` only writes the output folder.

Selective prediction (:mod:`derm_exp.evaluation.selective`, on the calibrated probabilities):
the risk-coverage curve (``plots/risk_coverage.png``), ``eval/aurc``, ``eval/eaurc`` and
``eval/selective_balanced_accuracy_cov90`` (one per ``selective_coverages``); and, when the
checkpoint holds an abstention threshold (fitted on the run's validation split), the coverage
and risk it reaches on the evaluated data (``eval/abstain_coverage``, ``eval/abstain_risk``).

Subgroups (:mod:`derm_exp.evaluation.subgroups`, on the calibrated probabilities): balanced
accuracy, macro AUC and ECE per sex, age band and body site with lesion-bootstrap CIs and sizes
(``subgroups.csv``, ``plots/subgroups.png``, ``eval/subgroup_gap_<metric>_<attribute>``); the
metadata comes from the evaluated rows or the dataset's metadata CSV (``subgroups.*``).

Outputs (Hydra run dir, also logged): ``evaluation_metrics.json``, ``plots/*.png`` and
``predictions.csv`` (one row per evaluated sample with its probabilities).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main
from derm_exp.evaluate_report import DISCLAIMER, Predictions, describe_model, subgroup_section

log = logging.getLogger("derm_exp.evaluate")


def check_inputs(cfg: DictConfig) -> None:
    """Fail at once, before torch loads, when the model or the data to evaluate is not there."""
    from derm_exp.data.metadata import DataValidationError, check_data_root
    from derm_exp.errors import ModelSourceError
    from derm_exp.evaluation.subgroup_report import subgroup_settings

    if cfg.model_ref is None:
        raise ModelSourceError("no model given: pass model=<checkpoint, run id or models:/ URI>")
    if cfg.split_csv is not None and cfg.data.root is not None:
        raise DataValidationError("give either split_csv=... or data.root=..., not both")
    if cfg.split_csv is not None and not Path(cfg.split_csv).expanduser().is_file():
        raise DataValidationError(f"split_csv={cfg.split_csv}: no such file")
    check_data_root(cfg.data.root, cfg.data.metadata_file)
    selective_coverages(cfg)
    subgroup_settings(cfg.get("subgroups"))
    metadata_csv = (cfg.get("subgroups") or {}).get("metadata_file")
    if metadata_csv is not None and not Path(metadata_csv).expanduser().is_file():
        raise DataValidationError(f"subgroups.metadata_file={metadata_csv}: no such file")


def evaluation_frame(cfg: DictConfig, source: Any) -> tuple[Any, str]:
    """The images to evaluate (image_id, lesion_id, dx, path, ...) and a description."""
    from derm_exp.data.errors import DataValidationError
    from derm_exp.data.metadata import load_metadata
    from derm_exp.data.splits import SPLITS, load_split_csv

    if cfg.split_csv is not None:
        frame, desc = load_split_csv(Path(cfg.split_csv).expanduser()), f"csv:{cfg.split_csv}"
    elif cfg.data.root is not None:
        root = Path(cfg.data.root).expanduser().resolve()
        frame, desc = load_metadata(root, cfg.data.metadata_file), f"folder:{root}"
    else:
        if cfg.split not in SPLITS:
            raise DataValidationError(f"split={cfg.split}: choose one of {', '.join(SPLITS)}")
        frame, desc = load_split_csv(source.split_csv(cfg.split)), f"run split:{cfg.split}"
    check_image_paths(frame, desc)
    if not desc.startswith("run split"):
        _warn_if_trained_on(frame, source)
    return frame.reset_index(drop=True), desc


def _warn_if_trained_on(frame: Any, source: Any) -> None:
    """Warn when evaluated images were in the model's training or validation split."""
    from derm_exp.data.splits import load_split_csv

    for split in ("train", "val"):
        try:
            seen = set(load_split_csv(source.split_csv(split))["image_id"].astype(str))
        except Exception:  # no saved split to compare with: nothing to warn about
            continue
        overlap = int(frame["image_id"].astype(str).isin(seen).sum())
        if overlap:
            log.warning(
                "%d of the %d evaluated images were in the model's %s split: these "
                "metrics are optimistic",
                overlap,
                len(frame),
                split,
            )


def check_image_paths(frame: Any, desc: str) -> None:
    """Fail clearly when the frame is empty or image files are missing."""
    from derm_exp.data.errors import DataValidationError

    if frame.empty:
        raise DataValidationError(f"no images to evaluate in {desc}")
    missing = [p for p in frame["path"].astype(str) if not Path(p).is_file()]
    if missing:
        raise DataValidationError(
            f"{len(missing)} of {len(frame)} images listed in {desc} do not exist (first: "
            f"{missing[0]}). Split CSVs store absolute paths from the machine that trained the "
            "model: evaluate the dataset folder with data.root=<HAM10000 folder>, or write a "
            "split_csv=<file> whose 'path' column points at the images here"
        )


def class_indices(frame: Any, classes: list[str]) -> Any:
    """Labels as indices into the *checkpoint's* class list."""
    from derm_exp.data.errors import DataValidationError

    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(frame["dx"]) - set(index))
    if unknown:
        raise DataValidationError(
            f"the data has classes {unknown} that the model does not know ({', '.join(classes)})"
        )
    return frame["dx"].map(index).to_numpy(dtype="int64")


def evaluation_loader(frame: Any, labels: Any, loaded: Any, cfg: DictConfig) -> Any:
    """The DataLoader of the evaluated images: ``cfg.data.batch_size`` images a batch, decoded
    and transformed by ``cfg.data.num_workers`` workers while the network runs."""
    from torch.utils.data import DataLoader

    from derm_exp.data.dataset import LesionDataset
    from derm_exp.data.transforms import build_eval_transform
    from derm_exp.inference.metadata_input import frame_metadata

    frame = frame.assign(label=labels)
    meta = frame_metadata(frame, loaded.metadata_encoder, str(cfg.get("metadata", "auto")))
    # on_bad_image="error": skipping would silently change the evaluated set.
    tf = build_eval_transform(loaded.data_config)
    dataset = LesionDataset(frame, tf, on_bad_image="error", metadata=meta)
    return DataLoader(
        dataset,
        batch_size=int(cfg.data.batch_size),
        shuffle=False,
        num_workers=int(cfg.data.num_workers),
    )


def resolve_temperature(cfg: DictConfig, source: Any, loaded: Any, ctx: Any) -> tuple[float, str]:
    """(temperature, where it comes from): the checkpoint's, or fitted on the run's val split."""
    from derm_exp.data.splits import load_split_csv
    from derm_exp.evaluation.calibration import fit_temperature
    from derm_exp.inference.sources import peek_checkpoint
    from derm_exp.training.loop import predict_logits
    from derm_exp.training.validate import ConfigError

    mode = str(cfg.temperature)
    if mode not in ("auto", "refit"):
        raise ConfigError(f"temperature={mode}: choose auto or refit")
    stored = peek_checkpoint(source.checkpoint).get("temperature")
    if mode == "auto" and stored is not None:
        return float(stored), "checkpoint (fitted on the training run's validation split)"
    try:
        val = load_split_csv(source.split_csv("val"))
        check_image_paths(val, "the run's validation split")
    except Exception as exc:
        if mode == "refit":
            raise
        log.warning(
            "no temperature in the checkpoint and no usable validation split (%s): "
            "calibrated metrics use T=1",
            exc,
        )
        return 1.0, "none (T=1: no stored temperature, no validation split)"
    labels = class_indices(val, loaded.classes)
    logits, y = predict_logits(
        loaded.model, evaluation_loader(val, labels, loaded, cfg), ctx, desc="val (temperature)"
    )
    return fit_temperature(logits, y), "fitted now on the training run's validation split"


def evaluate(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Evaluate ``cfg.model_ref`` as configured; write and log the report; return it."""
    from derm_exp.evaluate_report import report, write_predictions

    source = resolve_model(cfg)
    loaded, ctx = load_model(cfg, source)
    preset = tta_preset(cfg)
    frame, data_desc = evaluation_frame(cfg, source)
    labels = class_indices(frame, loaded.classes)
    temperature, t_source = resolve_temperature(cfg, source, loaded, ctx)
    predictions = predict(cfg, frame, labels, loaded, ctx, preset, temperature)
    result = score(cfg, predictions, loaded.classes)
    result["abstention"] = stored_abstention(source, predictions)
    result["subgroups"] = subgroup_section(cfg, frame, predictions, loaded)
    result.update(
        {
            "level": "lesion" if cfg.lesion_level else "image",
            "temperature": {"value": temperature, "source": t_source},
            "tta": {
                "mode": preset.mode,
                "views": list(preset.views),
                "aggregation": preset.aggregation,
            },
            "model": describe_model(cfg, source, loaded),
            "data": data_desc,
            "disclaimer": DISCLAIMER,
        }
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(output_dir / "predictions.csv", predictions, loaded.classes, cfg.lesion_level)
    report(cfg, result, predictions, loaded.classes, source, output_dir)
    return result


def resolve_model(cfg: DictConfig) -> Any:
    """The checked inputs' model source (:func:`derm_exp.inference.sources.resolve_source`)."""
    from derm_exp.inference.sources import resolve_source

    check_inputs(cfg)
    if cfg.tracking.enabled:  # fail fast, before the work, when the server is down
        from derm_exp.tracking.mlflow_run import check_reachable

        check_reachable(cfg.tracking.uri)
    return resolve_source(str(cfg.model_ref), cfg.tracking.uri)


def load_model(cfg: DictConfig, source: Any) -> tuple[Any, Any]:
    """The network on ``cfg.device`` and how to run it: fp32 on every device, exactly like the
    predictor, so the same image gives the same numbers. With ``backend=onnxruntime``,
    ``loaded.model`` is the checkpoint's ONNX export in ONNX Runtime (CPU), found or exported
    as the predictor does (:mod:`derm_exp.inference.backends`)."""
    import torch

    from derm_exp.inference.backends import check_backend, make_backend
    from derm_exp.inference.loading import load_classifier
    from derm_exp.runtime import Precision, resolve_device
    from derm_exp.training.loop import StepContext

    backend = check_backend(str(cfg.get("backend", "torch")))
    device = resolve_device(cfg.device) if backend == "torch" else torch.device("cpu")
    loaded = load_classifier(source.checkpoint, device)
    precision = Precision(None, False)
    if backend == "torch":
        loaded.model.to(memory_format=torch.channels_last)
    else:
        threads = cfg.get("backend_threads")
        loaded.model = make_backend(
            backend,
            loaded,
            device=device,
            precision=precision,
            source=source,
            threads=None if threads is None else int(threads),
            quantize=None if cfg.get("quantize") is None else str(cfg.quantize),
        )
    # ONNX Runtime takes NCHW: a channels-last batch would be copied back before every call.
    ctx = StepContext(device=device, precision=precision, channels_last=backend == "torch")
    return loaded, ctx


def tta_preset(cfg: DictConfig) -> Any:
    """The TTA views and their aggregation (``cfg.tta``)."""
    from derm_exp.inference.tta import preset_from_config
    from derm_exp.training.validate import ConfigError

    try:
        return preset_from_config(cfg.tta)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def predict(
    cfg: DictConfig,
    frame: Any,
    labels: Any,
    loaded: Any,
    ctx: Any,
    preset: Any,
    temperature: float,
) -> Predictions:
    """Probabilities for every image of ``frame`` (TTA views aggregated), before and after
    ``temperature``; per lesion with ``lesion_level=true``."""
    from derm_exp.evaluation.report import lesion_level
    from derm_exp.inference.tta import views_to_probabilities
    from derm_exp.training.loop import predict_logits
    from derm_exp.training.validate import ConfigError

    loader = evaluation_loader(frame, labels, loaded, cfg)
    logits, y = predict_logits(loaded.model, loader, ctx, views=list(preset.views), desc="evaluate")
    probs = views_to_probabilities(logits, 1.0, preset.aggregation)
    calibrated = views_to_probabilities(logits, temperature, preset.aggregation)
    ids = frame["image_id"].astype(str).to_numpy()
    groups = frame["lesion_id"].astype(str).to_numpy() if "lesion_id" in frame else None
    if cfg.lesion_level:
        if groups is None:
            raise ConfigError("lesion_level=true needs a lesion_id column in the data")
        y, ids, (probs, calibrated) = lesion_level(y, groups, probs, calibrated)
        groups = None  # one sample per lesion: the bootstrap resamples lesions
    return Predictions(y, probs, calibrated, ids, groups)


def score(cfg: DictConfig, p: Predictions, classes: list[str]) -> dict[str, Any]:
    """Metrics before and after calibration, bootstrap CIs resampling lesions."""
    from derm_exp.evaluation.report import evaluate_predictions

    result = evaluate_predictions(
        p.y,
        p.probs,
        classes,
        p.groups,
        int(cfg.bootstrap.n_boot),
        int(cfg.bootstrap.seed),
        alpha=float(cfg.bootstrap.alpha),
        calibrated_probs=p.calibrated,
        n_bins=int(cfg.n_bins),
        coverages=selective_coverages(cfg),
    )
    if p.groups is None and cfg.lesion_level and "bootstrap" in result:
        result["bootstrap"]["resampled"] = "lesions"
    return result


def stored_abstention(source: Any, p: Predictions) -> dict[str, Any] | None:
    """The checkpoint's abstention threshold and what it gives on these (calibrated)
    predictions (``on_data``); None when the checkpoint has no threshold."""
    from derm_exp.evaluation.selective import apply_threshold
    from derm_exp.inference.sources import peek_checkpoint

    entry = peek_checkpoint(source.checkpoint).get("abstention") or {}
    if entry.get("threshold") is None:
        return None
    return {
        "threshold": float(entry["threshold"]),
        "target": entry.get("target"),
        "val": entry.get("val"),
        "on_data": apply_threshold(p.y, p.calibrated, float(entry["threshold"])),
    }


def selective_coverages(cfg: DictConfig) -> list[float]:
    """``selective_coverages`` as numbers (one value is a one-item list); a clear error else."""
    from derm_exp.config import as_list
    from derm_exp.errors import ConfigError

    values = as_list(cfg.get("selective_coverages", [0.9, 0.8]))
    if not values or not all(
        isinstance(c, int | float) and not isinstance(c, bool) and 0 < c <= 1 for c in values
    ):
        raise ConfigError(f"selective_coverages={values}: a list of numbers in (0, 1]")
    return [float(c) for c in values]


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    from derm_exp.errors import report_user_errors

    with report_user_errors():
        evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    from derm_exp.inference.sources import rewrite_model_override

    sys.argv[1:] = rewrite_model_override(sys.argv[1:])
    run_hydra_main(main, "evaluate")
