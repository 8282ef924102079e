"""Each epoch's validation: score the raw and the EMA weights, keep the better as the candidate.

Logged per epoch: ``val/*`` of the selected weights, ``val/uses_ema`` (1 when EMA was selected)
and, with EMA, ``val_raw/*`` and ``val_ema/*`` (:data:`WEIGHT_METRICS`) of both weights.
"""

from __future__ import annotations

import numpy as np
import torch

from derm_exp.data.metadata import CLASSES
from derm_exp.evaluation.metrics import classification_metrics, scalar_metrics
from derm_exp.training import distributed
from derm_exp.training.data_setup import Loaders
from derm_exp.training.loop import predict_logits
from derm_exp.training.selection import Score, is_better, is_degenerate

# Logged for the raw and the EMA weights apart (``val_raw/<name>``, ``val_ema/<name>``).
WEIGHT_METRICS = ("balanced_accuracy", "loss")


def _val_logits(net, loaders: Loaders, ctx, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Validation logits and labels of every image once, in split order: under DDP each rank
    predicts its contiguous shard and the shards are gathered (same result as one process)."""
    shard = loaders.val_shard
    if shard is None:
        return predict_logits(net, loaders.val, ctx, desc=desc)
    if len(shard) == 0:  # fewer validation images than ranks
        logits, labels = np.zeros((0, len(CLASSES)), np.float32), np.zeros(0, np.int64)
    else:
        logits, labels = predict_logits(net, shard, ctx, desc=desc)
    return distributed.gather_shards(logits, labels)


def validate_epoch(cfg, model, ema, loaders: Loaders, ctx, epoch: int) -> tuple[Score, dict]:
    """Score raw (and EMA) weights on the validation split; return the better and its metrics."""
    candidates = {"raw": model}
    if ema is not None:
        candidates["ema"] = ema.module
    results: dict[str, tuple[Score, dict]] = {}
    for name, net in candidates.items():
        logits, labels = _val_logits(net, loaders, ctx, desc=f"val ({name})")
        probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
        flat = scalar_metrics(classification_metrics(labels, probs, CLASSES))
        flat["loss"] = flat["nll"]
        metrics = {f"val/{k}": v for k, v in flat.items()}
        value = metrics.get(cfg.trainer.monitor)
        if value is None:
            raise ValueError(
                f"trainer.monitor={cfg.trainer.monitor!r} is not a validation metric; choose one "
                f"of {', '.join(sorted(metrics))}"
            )
        constant = is_degenerate(logits.argmax(1))
        results[name] = (Score(value, flat["loss"], name, epoch, constant), metrics)
    chosen_name = "raw"
    if "ema" in results and is_better(
        results["ema"][0], results["raw"][0], cfg.trainer.monitor_mode
    ):
        chosen_name = "ema"
    chosen, metrics = results[chosen_name]
    if len(results) > 1:
        # Both weights' figures every epoch, so every history list has one value per epoch.
        metrics = dict(metrics)
        for name, (_, own) in results.items():
            for key in WEIGHT_METRICS:
                metrics[f"val_{name}/{key}"] = own[f"val/{key}"]
        metrics["val/uses_ema"] = float(chosen_name == "ema")
    return chosen, metrics
