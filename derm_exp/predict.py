"""Predict: ``python -m derm_exp.predict model=<ref> image=<file or folder> [tta=medium]``.

Research and education only; not a medical device. Do not use for diagnosis.

``model=`` names one model (checkpoint, output folder, MLflow run id, ``models:/`` URI) or an
ensemble: ``model=[ref1,ref2,...]``, ``group=<sweep id>`` or a registered ensemble
(``models:/derm-ensemble/N``); see :mod:`derm_exp.inference.prediction_model`.

One image prints a table (classes sorted by probability). A folder writes a CSV, one row per
image file, in file name order: ``image, predicted_class, confidence, uncertainty``, then
``view_std`` (one model with TTA) or ``std, entropy, mutual_information, disagreement`` (an
ensemble), then ``decision`` (predict | abstain) and ``reasons`` (``;``-separated codes, see
:mod:`derm_exp.inference.abstention`), ``prob_<class>`` for every class, ``error`` and
``disclaimer``. The ``abstain`` keys of conf/predict.yaml override the checkpoint's abstention
policy; the summary counts the abstentions and their reasons. A file that
cannot be read keeps its row, with only ``image``, ``error`` (why) and ``disclaimer`` filled,
so the rows line up with the inputs; stderr says how many failed. Exit status 0 when at least
one image was predicted, 1 when none was. The disclaimer is a column (repeated on every row)
rather than a comment line, so any CSV reader loads the file as is. ``uncertainty`` is the
normalised predictive entropy (0 = certain, 1 = uniform); with TTA, ``view_std`` is the
standard deviation across views of the predicted class's probability; the ensemble columns are
those of :mod:`derm_exp.inference.aggregation` (entropy and mutual information in nats).
"""

from __future__ import annotations

import csv
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main

if TYPE_CHECKING:
    from derm_exp.inference.file_predictions import FilePrediction

log = logging.getLogger("derm_exp.predict")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ENSEMBLE_COLUMNS = ("std", "entropy", "mutual_information", "disagreement")


def find_images(image: str, recursive: bool = False) -> list[Path]:
    """``image`` itself if it is a file, else the image files in that folder (sorted)."""
    from derm_exp.errors import PredictionInputError

    path = Path(image).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictionInputError(f"image={image}: no such file or folder")
    candidates = path.rglob("*") if recursive else path.iterdir()
    files = sorted(
        p
        for p in candidates
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        hint = "" if recursive else " (add recursive=true to search subfolders)"
        raise PredictionInputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}{hint}"
        )
    return files


def csv_columns(classes: list[str], ensemble: bool, tta: bool) -> list[str]:
    """The CSV header (see the module docstring)."""
    header = ["image", "predicted_class", "confidence", "uncertainty"]
    header += list(ENSEMBLE_COLUMNS) if ensemble else ["view_std"] if tta else []
    header += ["decision", "reasons"]
    return header + [f"prob_{c}" for c in classes] + ["error", "disclaimer"]


def _cell(column: str, found: FilePrediction, disclaimer: str) -> str:
    r = found.result
    if column == "image":
        return str(found.path)
    if column == "error":
        return found.error or ""
    if column == "disclaimer":
        return disclaimer
    if r is None:  # an unreadable file: no prediction
        return ""
    if column in ("predicted_class", "decision"):
        return str(r[column])
    if column == "reasons":
        return ";".join(r["reasons"])
    value = r["probabilities"][column[5:]] if column.startswith("prob_") else r[column]
    return f"{value:.6f}"


def write_csv(path: Path, found: list[FilePrediction], columns: list[str]) -> Path:
    """One row per image file, ``columns`` from :func:`csv_columns`."""
    from derm_exp.inference.predictor import DISCLAIMER

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for item in found:
            writer.writerow([_cell(c, item, DISCLAIMER) for c in columns])
    return path


def format_table(image: Path, r: dict[str, Any], model: str) -> str:
    """A readable report of one prediction, classes sorted by probability."""
    from derm_exp.data.metadata import CLASS_DESCRIPTIONS

    tta = r.get("tta")
    if not r["calibrated"]:
        calibration = "off"
    elif "temperature" in r:
        calibration = f"temperature {r['temperature']:.3f}"
    else:
        calibration = "each member's validation-fitted temperature"
    lines = [
        f"Image        {image}",
        f"Model        {model}",
        "TTA          "
        + (f"{tta['mode']} ({len(tta['views'])} views, {tta['aggregation']})" if tta else "none"),
        f"Calibration  {calibration}",
        "",
        f"Predicted    {r['predicted_class']} - {r['predicted_class_description']}",
        f"Confidence   {r['confidence']:.4f}",
        f"Uncertainty  {r['uncertainty']:.4f} (normalised entropy: 0 certain, 1 uniform)"
        + (f"; view std {r['view_std']:.4f}" if "view_std" in r else ""),
        *_ensemble_lines(r),
        _decision_line(r),
        "",
        f"  {'class':<6} {'probability':>11}  {'':<20}  description",
    ]
    for cls, p in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]):
        bar = "#" * round(20 * p)
        lines.append(f"  {cls:<6} {p:>11.4f}  {bar:<20}  {CLASS_DESCRIPTIONS.get(cls, cls)}")
    lines += ["", r["disclaimer"]]
    return "\n".join(lines)


def _decision_line(r: dict[str, Any]) -> str:
    """``Decision  predict`` or ``Decision  ABSTAIN (reasons)``, with the threshold."""
    threshold = r["abstention"]["threshold"]
    at = "no confidence threshold" if threshold is None else f"threshold {threshold:.4f}"
    if r["decision"] == "predict":
        return f"Decision     predict ({at})"
    return f"Decision     ABSTAIN: {', '.join(r['reasons'])} ({at}); do not rely on this answer"


def _ensemble_lines(r: dict[str, Any]) -> list[str]:
    """An ensemble's uncertainty and every member's own prediction (nothing for one model)."""
    if "ensemble" not in r:
        return []
    width = max(len(name) for name in r["member_predictions"])
    members = [
        f"{name:<{width}}  {cls:<6} weight {w:.3f}"
        for (name, cls), w in zip(
            r["member_predictions"].items(), r["ensemble"]["weights"], strict=True
        )
    ]
    return [
        f"Ensemble     std {r['std']:.4f} across members (probability of "
        f"{r['predicted_class']}), disagreement {r['disagreement']:.2f}",
        f"             entropy {r['entropy']:.4f} nats, mutual information "
        f"{r['mutual_information']:.4f} nats",
        *(f"{'Members' if i == 0 else '':<13}{line}" for i, line in enumerate(members)),
    ]


def predict(cfg: DictConfig, output_dir: str | Path) -> list[FilePrediction]:
    """Run the prediction app; return one :class:`FilePrediction` per image file."""
    from derm_exp.errors import ModelSourceError, PredictionInputError
    from derm_exp.tracking.model_refs import NO_MODEL, ref_list

    refs = ref_list(cfg.model_ref)
    if not refs and cfg.group is None:
        raise ModelSourceError(NO_MODEL)
    if cfg.image is None:
        raise PredictionInputError("no image given: pass image=<image file or folder>")
    files = find_images(str(cfg.image), bool(cfg.recursive))
    from derm_exp.inference.abstention import AbstentionPolicy

    AbstentionPolicy().with_overrides(_abstain_overrides(cfg))  # bad values fail before loading
    # Heavy imports (torch, timm) only once the inputs are known to exist.
    from derm_exp.inference.file_predictions import predict_files
    from derm_exp.inference.prediction_model import load_from_config
    from derm_exp.inference.tta import preset_from_config

    try:
        preset = preset_from_config(cfg.tta)
    except ValueError as exc:
        raise PredictionInputError(str(exc)) from None
    loaded = load_from_config(refs, cfg)
    policy = loaded.model.abstention.with_overrides(_abstain_overrides(cfg))
    loaded.model.abstention = policy
    single = Path(cfg.image).expanduser().is_file()
    metadata = metadata_rows(cfg, files)
    found = predict_files(
        loaded.model, files, int(cfg.batch_size), preset, progress=not single, metadata=metadata
    )
    predicted = [p for p in found if p.result is not None]
    output = Path(cfg.output).expanduser() if cfg.output else None
    if output is None and not single:
        output = Path(output_dir) / "predictions.csv"
    if single and predicted:
        print(format_table(files[0], predicted[0].result, loaded.description))
    elif not single:
        _print_summary(found, loaded.description, loaded.is_ensemble)
    if output is not None:
        columns = csv_columns(loaded.model.classes, loaded.is_ensemble, len(preset.views) > 1)
        write_csv(output, found, columns)
        print(f"  CSV: {output}")
    _report_failures(found, output)
    if not single:
        print(f"  {predicted[0].result['disclaimer']}")
    return found


def metadata_rows(cfg: DictConfig, files: list[Path]) -> list[dict[str, Any] | None] | None:
    """Each file's row of the ``metadata=<csv>`` table (None: not listed), or None without."""
    if not cfg.get("metadata"):
        return None
    from derm_exp.inference.metadata_input import metadata_for_paths, read_metadata_csv

    table = read_metadata_csv(str(cfg.metadata))
    return metadata_for_paths([str(f) for f in files], table)


def _abstain_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The ``abstain`` block of the config as a plain dict (null values: keep the model's)."""
    from omegaconf import OmegaConf

    block = OmegaConf.select(cfg, "abstain", default=None)
    return {} if block is None else dict(OmegaConf.to_container(block, resolve=True))


def _report_failures(found: list[FilePrediction], output: Path | None) -> None:
    """Say on stderr how many files could not be read; raise when none could be predicted."""
    from derm_exp.errors import PredictionInputError

    failed = [p for p in found if p.result is None]
    where = f" (their rows in {output} give the reason in column 'error')" if output else ""
    if len(failed) == len(found):
        if len(found) == 1:
            raise PredictionInputError(f"cannot read image {found[0].path}: {found[0].error}")
        raise PredictionInputError(f"none of the {len(found)} images could be read{where}")
    if failed:
        print(
            f"warning: {len(failed)} of {len(found)} images could not be read{where}",
            file=sys.stderr,
        )


def _print_summary(found: list[FilePrediction], model: str, ensemble: bool) -> None:
    """What a folder's prediction gave, in a few lines."""
    rows = [p.result for p in found if p.result is not None]
    counts = Counter(r["predicted_class"] for r in rows)
    of = f" of {len(found)}" if len(rows) < len(found) else ""
    print(f"\nPredicted {len(rows)}{of} image(s) with {model}")
    if not rows:
        return
    print("  predicted classes: " + ", ".join(f"{c} {n}" for c, n in counts.most_common()))
    print("  " + abstention_summary(rows))
    if ensemble:
        means = {k: sum(r[k] for r in rows) / len(rows) for k in ENSEMBLE_COLUMNS}
        print(
            f"  mean uncertainty: std {means['std']:.4f}, entropy {means['entropy']:.4f} nats, "
            f"mutual information {means['mutual_information']:.4f} nats, "
            f"disagreement {means['disagreement']:.3f}"
        )


def abstention_summary(rows: list[dict[str, Any]]) -> str:
    """``abstained on K of N image(s) (reason n, ...)``: the summary line of a folder."""
    abstained = [r for r in rows if r["decision"] == "abstain"]
    reasons = Counter(reason for r in abstained for reason in r["reasons"])
    detail = ", ".join(f"{k} {n}" for k, n in reasons.most_common())
    return f"abstained on {len(abstained)} of {len(rows)} image(s)" + (
        f" ({detail})" if detail else ""
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    import os

    from derm_exp.errors import report_user_errors

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours is enough
    with report_user_errors():
        predict(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    from derm_exp.inference.sources import rewrite_model_override

    sys.argv[1:] = rewrite_model_override(sys.argv[1:])
    run_hydra_main(main, "predict")
