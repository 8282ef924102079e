"""``python -m derm_exp.prepare_data`` end to end in a subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from derm_exp.config import PROJECT_ROOT


def run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "derm_exp.prepare_data", f"hydra.run.dir={tmp_path / 'hydra'}"]
    return subprocess.run(
        [*cmd, *overrides], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )


def test_valid_folder(demo_root: Path, tmp_path: Path) -> None:
    proc = run(tmp_path, f"data.root={demo_root}", f"splits_out={tmp_path / 'splits'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Status: OK" in proc.stdout and "Split (images (lesions))" in proc.stdout
    assert "Unreadable images: 0" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == [
        "test.csv",
        "train.csv",
        "val.csv",
    ]


def test_broken_folder(demo_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(demo_root, broken)
    csv = broken / "HAM10000_metadata.csv"
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].replace(",nv,", ",naevus,").replace(",mel,", ",naevus,")
    csv.write_text("\n".join(lines) + "\n")
    first_image = sorted((broken / "images").iterdir())[0]
    first_image.unlink()
    proc = run(tmp_path, f"data.root={broken}", "check_images=false")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FATAL problems" in out and "Status: FAILED" in out
    assert f"have no image file: {first_image.stem}" in out
    assert "Traceback" not in out

    proc = run(tmp_path, f"data.root={tmp_path / 'nowhere'}")
    assert proc.returncode == 1 and "does not exist" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_one_run_reports_every_problem(demo_root: Path, tmp_path: Path) -> None:
    """An empty lesion_id used to hide every other check, image folders included."""
    broken = tmp_path / "broken"
    shutil.copytree(demo_root, broken)
    csv = broken / "HAM10000_metadata.csv"
    lines = csv.read_text().splitlines()
    lines[1] = "," + lines[1].split(",", 1)[1]  # empty lesion_id
    lesion, image_id, dx, rest = lines[2].split(",", 3)
    lines[2] = ",".join([lesion, image_id, "naevus", rest])  # unknown label
    lines[4] = ",".join([lines[4].split(",")[0], lines[3].split(",")[1], *lines[4].split(",")[2:]])
    csv.write_text("\n".join(lines) + "\n")
    gone = sorted((broken / "images").iterdir())[-1]
    gone.unlink()
    proc = run(tmp_path, f"data.root={broken}", "check_images=false")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out
    assert "Image folders: images" in out
    assert "column 'lesion_id' is empty in 1 row(s) (CSV lines 2)" in out
    assert "unknown dx label(s) 'naevus': 1" in out
    assert f"appear in more than one row: {lines[3].split(',')[1]}" in out
    assert f"have no image file: {gone.stem}" in out
