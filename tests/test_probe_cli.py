"""``python -m derm_exp.probe`` end to end on generated demo data with a tiny model."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import timm
import torch

from tests.cli import run_module


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return run_module("derm_exp.probe", *args, timeout=600)


@pytest.mark.slow
def test_probe_scores_weights_and_random_init(demo_data: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), weights)
    proc = _probe(
        f"--data-root={demo_data}",
        "--models=test_efficientnet",
        f"--weights={weights}",
        "--norms=imagenet,half",
        "--image-size=32",
        "--train-lesions=80",
        "--test-lesions=40",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(
        r"^(test_efficientnet \| .+?)\s+(\d\.\d{3})\s+(\d\.\d{3})$", proc.stdout, re.M
    )
    labels = [r[0].strip() for r in rows]
    assert labels == [
        f"test_efficientnet | {weights} | imagenet",
        "test_efficientnet | random init | imagenet",
        f"test_efficientnet | {weights} | half",
    ]
    assert all(0.0 <= float(ba) <= 1.0 and 0.0 <= float(auc) <= 1.0 for _, ba, auc in rows)


@pytest.mark.slow
def test_probe_wrong_weights_is_a_clear_error(demo_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "_blocks.0.x.weight": torch.zeros(1)}, bad)
    proc = _probe(f"--data-root={demo_data}", "--models=tf_efficientnet_lite0", f"--weights={bad}")
    assert proc.returncode == 1
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr


def test_probe_help() -> None:
    proc = _probe("--help")
    assert proc.returncode == 0 and "not a medical device" in proc.stdout
