"""The checkpoint format on the command line: ``python -m derm_exp.train experiment=demo`` with
options typed (the session's ``options_run``) records the selected options in both checkpoints
(and a history with one value per epoch in every list); an older file still predicts and
resumes, a newer one is one ``error:`` line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derm_exp.models.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from tests.cli import run_module
from tests.options_run import OptionsRun


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_module(module, *args, cwd=cwd)


def _as_version_1(ck: dict) -> dict:
    """``ck`` as derm_exp wrote it before the format was checked: no format, kind or options."""
    return {k: v for k, v in ck.items() if k not in ("format", "kind", "choices")}


@pytest.mark.slow
def test_demo_checkpoints_record_options_and_old_files_still_load(
    options_run: OptionsRun, tmp_path: Path
) -> None:
    """The checkpoints of the session's ``experiment=demo model.head=acrnn loss=label_smoothing``
    run (2 epochs, tests/options_run.py) in its first output folder, not the resumed one's."""
    store, run_id = options_run.store, options_run.run_id
    out = options_run.root / "first"
    for kind in ("best", "latest"):
        ck = load_checkpoint(out / f"checkpoint_{kind}.pt")
        assert ck["format"] == FORMAT and ck["kind"] == kind and ck["run_id"] == run_id
        # The options as typed, experiment included (Hydra's choices).
        assert {g: ck["choices"].get(g) for g in ("experiment", "model", "model/head", "loss")} == {
            "experiment": "demo",
            "model": "tiny",
            "model/head": "acrnn",
            "loss": "label_smoothing",
        }

    # Both weights' validation figures every epoch: one value per epoch in every history list.
    history = load_checkpoint(out / "checkpoint_latest.pt")["history"]
    assert {len(v) for v in history.values()} == {2}
    assert {"val_raw/loss", "val_ema/loss", "val_raw/balanced_accuracy"} <= set(history)

    image = tmp_path / "lesion.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)).save(image)
    old = tmp_path / "old" / "checkpoint_best.pt"
    save_checkpoint(_as_version_1(load_checkpoint(out / "checkpoint_best.pt")), old)
    proc = _cli("derm_exp.predict", f"model={old}", f"image={image}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicted" in proc.stdout.lower()

    # An old latest checkpoint resumes: the run is finished, so it says so and does nothing.
    old_latest = tmp_path / "old" / "checkpoint_latest.pt"
    save_checkpoint(_as_version_1(load_checkpoint(out / "checkpoint_latest.pt")), old_latest)
    proc = _cli("derm_exp.train", f"resume={old_latest}", *store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Run {run_id} is already finished" in proc.stdout

    newer = tmp_path / "newer" / "checkpoint_best.pt"
    ck = load_checkpoint(out / "checkpoint_best.pt")
    save_checkpoint({**ck, "format": f"derm_exp.checkpoint/{FORMAT_VERSION + 1}"}, newer)
    proc = _cli("derm_exp.predict", f"model={newer}", f"image={image}", cwd=tmp_path)
    assert proc.returncode != 0
    assert f"written by a newer derm_exp (format {FORMAT_VERSION + 1}" in proc.stderr
    assert "error: " in proc.stderr and "Traceback" not in proc.stderr
