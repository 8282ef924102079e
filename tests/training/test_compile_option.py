"""trainer.compile: only the training step is compiled; checkpoints hold the plain module's keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict

from derm_exp.inference.loading import load_classifier
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.training.loop import compile_for_training
from derm_exp.training.trainer import fit


def test_compile_setting_off_returns_the_model_itself() -> None:
    model = torch.nn.Linear(2, 2)
    for off in (False, None, "false", "off"):
        assert compile_for_training(model, off) is model


def test_compiled_run_saves_clean_checkpoints(
    tiny_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[torch.nn.Module] = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):  # dynamo wrapper without C++ codegen: seconds, not minutes
        out = real_compile(model, backend="eager", **kwargs)
        compiled.append(out)
        return out

    monkeypatch.setattr(torch, "compile", eager_compile)
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.compile = True
        tiny_cfg.trainer.max_epochs = 1
        tiny_cfg.data.cache_dir = str(tmp_path / "cache")
    fit(tiny_cfg, tmp_path / "out")
    assert len(compiled) == 1 and "_orig_mod." in next(iter(compiled[0].state_dict()))
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt"):
        ck = load_checkpoint(tmp_path / "out" / name)
        assert not any(k.startswith("_orig_mod.") for k in ck["model"]), name
    latest = load_checkpoint(tmp_path / "out" / "checkpoint_latest.pt")
    assert not any("_orig_mod" in k for k in latest["ema"])
    load_classifier(tmp_path / "out" / "checkpoint_best.pt")  # loads strictly
