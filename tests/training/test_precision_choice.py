"""``trainer.amp=fast`` (the ``cpu_1h`` preset's choice): bf16 autocast only on a CPU that computes
bf16 natively. Emulated bf16 ran the preset's train step 10x slower than fp32 on an AVX2 CPU, so
the preset must not force it there, and forcing it by hand says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from derm_exp import runtime
from derm_exp.runtime import cpu_has_native_bf16, resolve_precision
from tests.conftest import compose_train

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "dtype"), [(True, torch.bfloat16), (False, None)])
def test_fast_is_bf16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, dtype: torch.dtype | None
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("fast", CPU).dtype is dtype
    assert resolve_precision("auto", CPU).dtype is None  # auto stays fp32 on every CPU


def test_forced_bf16_on_a_cpu_without_it_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="derm_exp.runtime"):
        assert resolve_precision("bf16", CPU).dtype is torch.bfloat16  # what was asked for
    assert "without native bf16" in caplog.text and "amp=fast" in caplog.text
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="derm_exp.runtime"):
        resolve_precision("bf16", CPU)
    assert caplog.text == ""


def test_the_probe_agrees_with_the_kernel_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set(cpuinfo.read_text().split())
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_tile"} & flags)


def test_the_cpu_1h_preset_asks_for_fast() -> None:
    cfg = compose_train(["experiment=cpu_1h"])
    assert cfg.trainer.amp == "fast"


def test_an_unknown_mode_names_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, fast, bf16, fp16, off"):
        resolve_precision("half", CPU)
