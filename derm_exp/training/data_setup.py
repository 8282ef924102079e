"""From the data config to split-aware DataLoaders for a training run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from derm_exp.data.dataset import LesionDataset
from derm_exp.data.metadata import CLASSES, load_metadata
from derm_exp.data.sampling import make_weighted_sampler
from derm_exp.data.splits import split_dataset
from derm_exp.data.synthetic import resolve_data_root
from derm_exp.data.transforms import build_eval_transform, build_train_transform


def split_frame(data_cfg: DictConfig) -> pd.DataFrame:
    """Read and validate the dataset, then split it lesion-aware and stratified."""
    frame = load_metadata(resolve_data_root(data_cfg), data_cfg.metadata_file)
    return split_dataset(
        frame, data_cfg.val_fraction, data_cfg.test_fraction, seed=data_cfg.split_seed
    )


def data_fingerprint(frame: pd.DataFrame) -> str:
    """A short hash of the split assignment (image id, label, split): same data, same hash."""
    rows = frame.sort_values("image_id")[["image_id", "dx", "split"]].astype(str)
    text = "\n".join(",".join(r) for r in rows.itertuples(index=False, name=None))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_labels: np.ndarray
    generator: torch.Generator


def build_loaders(
    frame: pd.DataFrame,
    data_cfg: DictConfig,
    augment_cfg: DictConfig,
    data_config: dict,
    device: torch.device,
) -> Loaders:
    """Training loader (shuffled or class-balanced) and ordered val/test loaders.

    The training loader draws its order from ``generator``; the trainer reseeds it every epoch
    so an epoch's order does not depend on earlier epochs (exact resume). The last partial
    training batch is dropped: BatchNorm heads need >= 2 images and mixup an even batch.
    """
    pin = device.type == "cuda" if data_cfg.pin_memory == "auto" else bool(data_cfg.pin_memory)
    workers = int(data_cfg.num_workers)
    common = {
        "num_workers": workers,
        "pin_memory": pin,
        "persistent_workers": workers > 0 and device.type == "cuda",
    }
    parts = {s: frame[frame["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    train_labels = parts["train"]["label"].to_numpy()
    generator = torch.Generator()
    train_set = LesionDataset(
        parts["train"], build_train_transform(augment_cfg, data_config), data_cfg.on_bad_image
    )
    sampler = None
    if data_cfg.sampler == "weighted":
        sampler = make_weighted_sampler(train_labels, len(CLASSES), power=data_cfg.sampler_power)
        sampler.generator = generator
    elif data_cfg.sampler != "none":
        raise ValueError(f"data.sampler={data_cfg.sampler!r}: choose none or weighted")
    batch = int(data_cfg.batch_size)
    train = DataLoader(
        train_set,
        batch_size=batch,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=len(train_set) > batch,
        **common,
    )
    eval_tf = build_eval_transform(data_config)

    def ordered(split: str) -> DataLoader:
        ds = LesionDataset(parts[split], eval_tf, data_cfg.on_bad_image)
        return DataLoader(ds, batch_size=int(data_cfg.eval_batch_size), shuffle=False, **common)

    return Loaders(train, ordered("val"), ordered("test"), train_labels, generator)
