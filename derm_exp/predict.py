"""Predict: ``python -m derm_exp.predict model=<ref> image=<file or folder> [tta=medium]``.

Research and education only; not a medical device. Do not use for diagnosis.

One image prints a table (classes sorted by probability). A folder writes a CSV, one row per
readable image (unreadable files are skipped with a warning): ``image, predicted_class,
confidence, uncertainty, [view_std with TTA], prob_<class> for every class, disclaimer``. The
disclaimer is a column (repeated on every row) rather than a comment line, so any CSV reader
loads the file as is. ``uncertainty`` is the normalised predictive entropy (0 = certain,
1 = uniform); with TTA, ``view_std`` is the standard deviation across views of the predicted
class's probability.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main

log = logging.getLogger("derm_exp.predict")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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


def write_csv(path: Path, rows: list[tuple[Path, dict[str, Any]]], classes: list[str]) -> Path:
    """One row per image; see the module docstring for the columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tta = any("view_std" in r for _, r in rows)
    header = ["image", "predicted_class", "confidence", "uncertainty"]
    header += ["view_std"] if tta else []
    header += [f"prob_{c}" for c in classes] + ["disclaimer"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for image, r in rows:
            row = [
                str(image),
                r["predicted_class"],
                f"{r['confidence']:.6f}",
                f"{r['uncertainty']:.6f}",
            ]
            row += [f"{r['view_std']:.6f}"] if tta else []
            row += [f"{r['probabilities'][c]:.6f}" for c in classes] + [r["disclaimer"]]
            writer.writerow(row)
    return path


def format_table(image: Path, r: dict[str, Any], model: str) -> str:
    """A readable report of one prediction, classes sorted by probability."""
    from derm_exp.data.metadata import CLASS_DESCRIPTIONS

    tta = r.get("tta")
    lines = [
        f"Image        {image}",
        f"Model        {model}",
        "TTA          "
        + (f"{tta['mode']} ({len(tta['views'])} views, {tta['aggregation']})" if tta else "none"),
        "Calibration  " + (f"temperature {r['temperature']:.3f}" if r["calibrated"] else "off"),
        "",
        f"Predicted    {r['predicted_class']} - {r['predicted_class_description']}",
        f"Confidence   {r['confidence']:.4f}",
        f"Uncertainty  {r['uncertainty']:.4f} (normalised entropy: 0 certain, 1 uniform)"
        + (f"; view std {r['view_std']:.4f}" if "view_std" in r else ""),
        "",
        f"  {'class':<6} {'probability':>11}  {'':<20}  description",
    ]
    for cls, p in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]):
        bar = "#" * round(20 * p)
        lines.append(f"  {cls:<6} {p:>11.4f}  {bar:<20}  {CLASS_DESCRIPTIONS.get(cls, cls)}")
    lines += ["", r["disclaimer"]]
    return "\n".join(lines)


def predict(cfg: DictConfig, output_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Run the prediction app; return ``[(image path, prediction dict), ...]``."""
    from derm_exp.errors import ModelSourceError, PredictionInputError

    if cfg.model_ref is None:
        raise ModelSourceError("no model given: pass model=<checkpoint, run id or models:/ URI>")
    if cfg.image is None:
        raise PredictionInputError("no image given: pass image=<image file or folder>")
    files = find_images(str(cfg.image), bool(cfg.recursive))
    # Heavy imports (torch, timm) only once the inputs are known to exist.
    from derm_exp.inference.predictor import SkinLesionPredictor
    from derm_exp.inference.tta import preset_from_config

    try:
        preset = preset_from_config(cfg.tta)
    except ValueError as exc:
        raise PredictionInputError(str(exc)) from None
    predictor = SkinLesionPredictor.from_ref(
        str(cfg.model_ref),
        cfg.tracking.uri,
        device=cfg.device,
        calibrate=bool(cfg.calibrate),
        amp=str(cfg.amp),
        compile=bool(cfg.compile),
    )
    single = Path(cfg.image).expanduser().is_file()
    found = predictor.iter_predictions(
        files, int(cfg.batch_size), preset, progress=not single, skip_unreadable=not single
    )
    rows = [(files[i], predictor.result(p, v, preset)) for i, p, v in found]
    output = Path(cfg.output).expanduser() if cfg.output else None
    if output is None and not single:
        output = Path(output_dir) / "predictions.csv"
    if single:
        print(format_table(files[0], rows[0][1], _describe(predictor)))
    else:
        counts = Counter(r["predicted_class"] for _, r in rows)
        skipped = len(files) - len(rows)
        print(
            f"\nPredicted {len(rows)} image(s)"
            + (f", skipped {skipped} unreadable" if skipped else "")
            + f" with {_describe(predictor)}"
        )
        print("  predicted classes: " + ", ".join(f"{c} {n}" for c, n in counts.most_common()))
    if output is not None:
        if not rows:
            raise PredictionInputError(f"none of the {len(files)} images could be read")
        write_csv(output, rows, predictor.classes)
        print(f"  CSV: {output}")
    if not single:
        print(f"  {rows[0][1]['disclaimer'] if rows else ''}")
    return rows


def _describe(predictor: Any) -> str:
    source = predictor.source
    if source is None:
        return str(predictor.checkpoint_path)
    run = f", run {source.run_id}" if source.run_id and source.kind != "checkpoint" else ""
    return f"{source.ref} ({source.kind}{run})"


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    from derm_exp.errors import report_user_errors

    with report_user_errors():
        predict(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    from derm_exp.inference.sources import rewrite_model_override

    sys.argv[1:] = rewrite_model_override(sys.argv[1:])
    run_hydra_main(main, "predict")
