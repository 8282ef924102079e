"""``python -m derm_exp.benchmark benchmark.sections=[backend]`` on a tiny model, in a
subprocess: every backend variant is measured in one run and compared with torch fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inference.conftest import run_cli
from tests.tiny import TINY_MODEL

VARIANTS = ("torch_fp32", "torch_bf16", "ort_fp32", "ort_int8")


@pytest.mark.slow
def test_backend_section_measures_every_variant(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = run_cli(
        "derm_exp.benchmark",
        *TINY_MODEL,
        f"data.root={demo_data}",
        "benchmark.sections=[backend]",
        "benchmark.backend_compile=false",  # compiling takes minutes: skipped here
        "benchmark.backend_images=4",
        "benchmark.warmup=1",
        "benchmark.repeats=2",
        "benchmark.eval_passes=1",
        "data.num_workers=0",
        "benchmark.threads=1",
        "tta=medium",
        "device=cpu",
        f"hydra.run.dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = json.loads((out / "benchmark.json").read_text())["backend"]
    assert set(section["variants"]) == set(VARIANTS)  # no compiled variant when skipped
    for name in VARIANTS:
        figures = section["variants"][name]
        assert figures["single_ms"] > 0 and figures["tta_ms"] > 0 and figures["eval_tta_img_s"] > 0
        assert 0 < figures["eval_forward_share"] <= 1
    assert section["variants"]["ort_fp32"]["max_abs_prob_diff"] < 1e-4
    assert section["variants"]["ort_int8"]["approximate"] is True
    assert section["tta_views"] == 8 and section["threads"] == 1
    assert section["export_fp32_s"] > 0 and section["export_int8_s"] > 0
    ratios = section["ratios"]
    assert ratios["ort_fp32_single"] > 0 and isinstance(ratios["goal_met"], bool)
    assert ratios["ort_fp32_eval_speedup"] > 0 and isinstance(ratios["eval_goal_met"], bool)
    assert "ORT fp32 / torch fp32, 1 image" in proc.stdout
