"""ONNX export in process: the embedded metadata, verification against PyTorch (and its failure
beyond the tolerance), int8 metadata, an export without onnxruntime installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from derm_exp.exporting.metadata import read_metadata, sidecar_path
from derm_exp.exporting.pipeline import export_loaded, onnx_file_name
from derm_exp.exporting.runtime import OnnxUnavailableError, open_session
from derm_exp.exporting.verify import ExportVerificationError
from tests.exporting.conftest import tiny_loaded


@pytest.mark.parametrize("head", ["simple", "acrnn"])
def test_export_embeds_metadata_and_matches_torch(head: str, tmp_path: Path) -> None:
    import torch

    loaded = tiny_loaded(head)
    result = export_loaded(loaded, None, {"abstention": {"threshold": 0.4}}, tmp_path / "m.onnx")
    meta = read_metadata(result.path)
    assert meta["classes"] == loaded.classes and meta["temperature"] == pytest.approx(1.7)
    assert meta["data_config"]["input_size"] == [3, 32, 32]
    assert meta["data_config"]["mean"] == pytest.approx(list(loaded.data_config["mean"]))
    assert meta["abstention"] == {"threshold": 0.4} and meta["precision"] == "fp32"
    assert meta["approximate"] is False and meta["opset"] == 17
    assert meta["verification"]["passed"] and "generated images" in meta["verification"]["inputs"]
    assert json.loads(sidecar_path(result.path).read_text()) == meta
    session = open_session(result.path, threads=1)
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's: dynamic batch
    with torch.inference_mode():
        expected = loaded.model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-5)


def test_int8_export_is_flagged_approximate(tmp_path: Path) -> None:
    result = export_loaded(tiny_loaded("simple"), None, {}, tmp_path / "m.onnx", quantize="int8")
    meta = read_metadata(result.path)
    assert meta["precision"] == "int8" and meta["approximate"] is True
    assert meta["quantization"]["method"] == "static"
    assert meta["verification"]["tolerance"] == 0.25
    assert onnx_file_name("run/checkpoint_best.pt", "int8") == "checkpoint_best.int8.onnx"


def test_export_beyond_tolerance_fails_with_both_numbers(tmp_path: Path) -> None:
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(ExportVerificationError, match=r"difference \S+ > tolerance 1e-09"):
        export_loaded(tiny_loaded("simple"), None, {}, out, quantize="int8", tolerance=1e-9)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_export_without_onnxruntime_gives_install_hint(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(OnnxUnavailableError, match=r"not installed .*derm_exp\[onnx\]"):
        export_loaded(tiny_loaded("simple"), None, {}, tmp_path / "m.onnx")


def test_exports_section_records_each_backbone_and_why_one_fails(monkeypatch, tmp_path) -> None:
    import torch

    from derm_exp.perf.exports import export_one, table_rows

    good = export_one("tiny", "acrnn", 32, tmp_path, threads=1)
    assert good["ok"] and good["file_mb"] > 0 and good["max_abs_prob_diff"] < 1e-4
    assert list(tmp_path.iterdir()) == []  # the file was only measured

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX opset 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    bad = export_one("tiny", "simple", 32, tmp_path, threads=1)
    assert not bad["ok"] and "torch.onnx.export failed" in bad["error"] and "fancy" in bad["error"]
    rows = table_rows({"exports": {"models": {"tiny+acrnn": good, "tiny+simple": bad}}})
    assert rows[0] == ("exports.models.tiny+acrnn.seconds", "export + verify: tiny+acrnn", "s")
