"""Rebuild a trained classifier from its own checkpoint (never from the repo's current config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from derm_exp.data.metadata_encoding import MetadataEncoder, encoder_from_checkpoint
from derm_exp.models.checkpoint import checkpoint_metadata, load_checkpoint
from derm_exp.models.classifier import SkinLesionClassifier, build_model


@dataclass
class LoadedModel:
    """A network in eval mode with what is needed to feed it and read its output."""

    model: SkinLesionClassifier
    classes: list[str]
    data_config: dict
    temperature: float
    config: dict
    checkpoint_path: Path | None
    abstention: dict | None = None  # the checkpoint's selective-prediction entry, if any
    # A metadata-fusion model's patient-metadata encoder (fitted on its training split).
    metadata_encoder: MetadataEncoder | None = None

    def encode_metadata(self, records: Any) -> Any:
        """(N, M) float32 tensor for one metadata dict (or None) per image; None for an
        image-only model (which ignores metadata)."""
        if self.metadata_encoder is None:
            return None
        return torch.from_numpy(self.metadata_encoder.encode_records(list(records)))


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a ``checkpoint_best.pt``/``checkpoint_latest.pt`` written by derm_exp.

    The architecture, class list, preprocessing (``data_config``) and temperature all come from
    the checkpoint, and so does a metadata model's encoder. Loading uses
    ``torch.load(weights_only=True)``; an image-only checkpoint from before metadata fusion
    loads as an image-only model.
    """
    ck = load_checkpoint(path)
    meta = checkpoint_metadata(ck, path)
    model_cfg = OmegaConf.create(meta.config["model"])
    # The checkpoint holds every weight: never fetch or read pretrained weights again.
    model_cfg.pretrained, model_cfg.pretrained_file = False, None
    image_size = meta.data_config["input_size"][-1]
    encoder = encoder_from_checkpoint(meta.metadata_encoding)
    model = build_model(
        model_cfg, num_classes=len(meta.classes), image_size=image_size, metadata_encoder=encoder
    )
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return LoadedModel(
        model=model,
        classes=meta.classes,
        data_config=meta.data_config,
        temperature=meta.temperature,
        config=meta.config,
        checkpoint_path=Path(path),
        abstention=meta.abstention,
        metadata_encoder=encoder,
    )
