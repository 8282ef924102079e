"""Explain: ``python -m derm_exp.explain model=<ref> image=<file or folder> [method=gradcam]``.

Research and education only; not a medical device. Do not use for diagnosis.

``model=`` names one model (checkpoint, output folder, MLflow run id, ``models:/`` URI), loaded
as :mod:`derm_exp.predict` loads it. Each readable image gives ``<out>/<stem>_<method>.png``
(image, heat map over it, top-3 classes, disclaimer); a folder adds ``contact_sheet.png``.
Unreadable files are reported on stderr and skipped; the exit status is 1 only when none could
be read. ``metadata=<csv>`` gives a metadata-fusion model each image's patient metadata (as
:mod:`derm_exp.predict` reads it). ``sanity=true`` adds the randomisation and class-sensitivity
checks (:mod:`derm_exp.explanations.sanity`) on up to ``sanity_images`` images.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main
from derm_exp.predict import find_images, metadata_rows

if TYPE_CHECKING:
    from derm_exp.explanations import Explanation
    from derm_exp.inference.predictor import SkinLesionPredictor

log = logging.getLogger("derm_exp.explain")


@dataclass
class ExplainedFile:
    """One input file: its figure, or why it could not be read."""

    path: Path
    figure: Path | None = None
    explanation: Explanation | None = None
    error: str | None = None


def load_predictor(cfg: DictConfig) -> SkinLesionPredictor:
    """The one model ``model=`` names (an ensemble is refused: its members look differently)."""
    from derm_exp.errors import ModelSourceError
    from derm_exp.explanations import ExplanationError
    from derm_exp.inference.prediction_model import load_prediction_model
    from derm_exp.tracking.model_refs import NO_MODEL, ref_list

    refs = ref_list(cfg.model_ref)
    if not refs:
        raise ModelSourceError(NO_MODEL)
    if len(refs) > 1:
        raise ExplanationError("explanations need one model: give model=<one reference>")
    loaded = load_prediction_model(
        refs,
        tracking_uri=cfg.tracking.uri,
        device=cfg.device,
        calibrate=bool(cfg.calibrate),
    )
    if loaded.is_ensemble:
        raise ExplanationError(
            f"{loaded.description} is an ensemble; explanations need one model: give one of "
            "its members (a checkpoint, run id or models:/ URI)"
        )
    return loaded.model


def explain_files(
    predictor: SkinLesionPredictor, files: list[Path], cfg: DictConfig, out: Path
) -> list[ExplainedFile]:
    """One figure per readable file (progress bar over the files)."""
    from tqdm.auto import tqdm

    from derm_exp.data.images import BadImageError
    from derm_exp.errors import PredictionInputError
    from derm_exp.explanations import explain_image
    from derm_exp.explanations.figures import explanation_figure

    target = None if cfg.target is None else cfg.target
    rows = metadata_rows(cfg, files) or [None] * len(files)
    done: list[ExplainedFile] = []
    bar = tqdm(files, desc="explain", unit="img", disable=None if len(files) > 1 else True)
    for path, row in zip(bar, rows, strict=True):
        try:
            exp = explain_image(
                predictor,
                path,
                method=str(cfg.method),
                target=target,
                alpha=float(cfg.alpha),
                metadata=row,
            )
        except (BadImageError, PredictionInputError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            done.append(ExplainedFile(path, error=str(exc)))
            continue
        figure = out / f"{path.stem}_{exp.method}.png"
        explanation_figure(
            exp.image,
            exp.overlay,
            title=path.name,
            top=exp.top(3),
            method=exp.method,
            target=exp.target_class,
            path=figure,
        )
        done.append(ExplainedFile(path, figure, exp))
    return done


def write_contact_sheet(done: list[ExplainedFile], method: str, out: Path) -> Path:
    """Every overlay of a folder on one sheet, captioned with its top class."""
    from derm_exp.explanations.figures import METHOD_TITLES, Tile, tile_sheet

    tiles = [
        Tile(
            d.explanation.overlay,
            d.path.name,
            " ".join(f"{c} {p:.0%}" for c, p in d.explanation.top(1)),
        )
        for d in done
        if d.explanation is not None
    ]
    path = out / "contact_sheet.png"
    tile_sheet(tiles, title=f"{METHOD_TITLES.get(method, method)} ({len(tiles)} images)", path=path)
    return path


def run_sanity(
    predictor: SkinLesionPredictor, done: list[ExplainedFile], cfg: DictConfig, out: Path
) -> dict:
    """The sanity checks on up to ``cfg.sanity_images`` of the explained images."""
    import torch

    from derm_exp.explanations.figures import sanity_figure
    from derm_exp.explanations.sanity import sanity_check

    images = [d.explanation.image for d in done if d.explanation is not None]
    batch = torch.stack([predictor.preprocess(im) for im in images[: int(cfg.sanity_images)]])
    report = sanity_check(predictor.eager_model, batch, method=str(cfg.method))
    print(report.summary())
    payload = {
        **report.metrics(),
        "method": report.method,
        "n_images": report.n_images,
        "cascade": [{"randomised_through": n, "spearman": v} for n, v in report.cascade],
    }
    (out / "sanity.json").write_text(json.dumps(payload, indent=2) + "\n")
    sanity_figure(report, out / "sanity.png")
    print(f"  sanity: {out / 'sanity.json'}, {out / 'sanity.png'}")
    return payload


def explain(cfg: DictConfig, output_dir: str | Path) -> list[ExplainedFile]:
    """Run the explain app; return one :class:`ExplainedFile` per image file."""
    from derm_exp.errors import PredictionInputError

    if cfg.image is None:
        raise PredictionInputError("no image given: pass image=<image file or folder>")
    files = find_images(str(cfg.image), bool(cfg.recursive))
    from derm_exp.explanations.methods import METHODS, check_method

    if cfg.method not in METHODS:
        check_method(None, str(cfg.method))  # raises: unknown method, before loading the model
    predictor = load_predictor(cfg)
    check_method(predictor.eager_model, str(cfg.method))
    out = Path(cfg.out).expanduser() if cfg.out else Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = explain_files(predictor, files, cfg, out)
    failed = [d for d in done if d.figure is None]
    for d in done:
        print(f"  {d.path.name}: " + (f"{d.figure}" if d.figure else f"unreadable ({d.error})"))
    if len(failed) == len(done):
        raise PredictionInputError(f"none of the {len(done)} image(s) could be read")
    if failed:
        print(f"warning: {len(failed)} of {len(done)} images could not be read", file=sys.stderr)
    if Path(cfg.image).expanduser().is_dir():
        print(f"  contact sheet: {write_contact_sheet(done, str(cfg.method), out)}")
    if cfg.sanity:
        run_sanity(predictor, done, cfg, out)
    from derm_exp.explanations.figures import DISCLAIMER

    print(f"  {DISCLAIMER}")
    return done


@hydra.main(version_base="1.3", config_path="../conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    import os

    from derm_exp.errors import report_user_errors

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with report_user_errors():
        explain(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    from derm_exp.inference.sources import rewrite_model_override

    sys.argv[1:] = rewrite_model_override(sys.argv[1:])
    run_hydra_main(main, "explain")
