"""Sanity checks of saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

* Model-parameter randomisation: the maps of the trained model are compared with those of
  copies whose weights are re-initialised in a cascade from the top (the head first, then the
  backbone's stages from the last to the stem). A method that explains the *model* gives maps
  that decorrelate as more layers are randomised; one that only draws edges of the image does
  not. The figure is the Spearman rank correlation between the two maps of an image, averaged
  over images (1 = same ranking of pixels, 0 = unrelated).
* Target-class sensitivity: the map for an image's most probable class against its map for the
  second most probable one; a map that ignores the class gives a correlation of 1.

Hand-written (a few lines over captum): captum ships the attribution methods, not these checks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from derm_exp.explanations.methods import check_method, explain_batch
from derm_exp.explanations.target_layer import feature_source


@dataclass
class SanityReport:
    """Mean Spearman correlations of :func:`sanity_check` (NaN when every map was constant)."""

    method: str
    n_images: int
    randomisation_spearman: float  # trained vs fully randomised (every cascade step applied)
    class_sensitivity_spearman: float  # map of the top class vs map of the second class
    cascade: list[tuple[str, float]] = field(default_factory=list)  # after each step

    def metrics(self, prefix: str = "explain/") -> dict[str, float]:
        """Finite figures as MLflow metrics: ``explain/randomisation_spearman``, ..."""
        head = self.cascade[0][1] if self.cascade else float("nan")
        values = {
            "randomisation_spearman": self.randomisation_spearman,
            "randomisation_spearman_head": head,
            "class_sensitivity_spearman": self.class_sensitivity_spearman,
        }
        return {f"{prefix}{k}": float(v) for k, v in values.items() if np.isfinite(v)}

    def summary(self) -> str:
        return (
            f"{self.method} sanity on {self.n_images} image(s): Spearman trained vs randomised "
            f"weights {self.randomisation_spearman:.3f} (head only "
            f"{self.metrics().get('explain/randomisation_spearman_head', float('nan')):.3f}), "
            f"top class vs second class {self.class_sensitivity_spearman:.3f} "
            "(1 = identical ranking, 0 = unrelated; lower passes)"
        )


def mean_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Spearman correlation of two (B, H, W) map stacks; pairs where a
    map is constant (correlation undefined) are left out, NaN when all are."""
    values = []
    for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            values.append(float(spearmanr(x, y).statistic))
    return float(np.mean(values)) if values else float("nan")


def cascade_groups(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layer groups from the top: the head, then the backbone's children in reverse order, a
    container child (timm's ``blocks``, a ResNet ``layerN``) split into its own children."""
    groups: list[tuple[str, nn.Module]] = []
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        groups.append(("head", head))
    source = feature_source(model)
    for name, child in reversed(list(source.named_children())):
        inner = list(child.named_children())
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(inner) > 1:
            groups += [(f"{name}.{n}", c) for n, c in reversed(inner)]
        elif any(p.numel() for p in child.parameters()) or list(child.buffers()):
            groups.append((name, child))
    return groups


def _reinitialise(module: nn.Module) -> None:
    """Fresh random weights (each layer's own ``reset_parameters``; BN stats reset too)."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
        reset_stats = getattr(m, "reset_running_stats", None)
        if callable(reset_stats):
            reset_stats()


def _top_two(
    model: nn.Module, batch: torch.Tensor, metadata: torch.Tensor | None
) -> tuple[list[int], list[int]]:
    param = next(model.parameters())
    was = model.training
    model.eval()
    x = batch.to(param.device, torch.float32)
    with torch.no_grad():
        logits = model(x) if metadata is None else model(x, metadata.to(param.device))
        order = logits.argsort(-1, descending=True)
    model.train(was)
    return order[:, 0].tolist(), order[:, 1].tolist()


def sanity_check(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    method: str = "gradcam",
    targets: Sequence[int] | None = None,
    seed: int = 0,
    metadata: torch.Tensor | None = None,
) -> SanityReport:
    """Both checks on a preprocessed batch (B, 3, H, W) (with a metadata-fusion model's (B, M)
    encoded ``metadata``); ``model`` itself is not changed (the randomised copies are deep
    copies). ``targets`` default to each image's top class."""
    check_method(model, method)
    meta = metadata if getattr(model, "fusion", None) is not None else None
    top, second = _top_two(model, batch, meta)
    targets = list(targets) if targets is not None else top
    trained = explain_batch(model, batch, method=method, targets=targets, metadata=meta)
    other = explain_batch(model, batch, method=method, targets=second, metadata=meta)
    randomised = copy.deepcopy(model)
    cascade = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, group in cascade_groups(randomised):
            _reinitialise(group)
            maps = explain_batch(randomised, batch, method=method, targets=targets, metadata=meta)
            cascade.append((name, mean_spearman(trained, maps)))
    del randomised
    return SanityReport(
        method=method,
        n_images=int(batch.shape[0]),
        randomisation_spearman=cascade[-1][1] if cascade else float("nan"),
        class_sensitivity_spearman=mean_spearman(trained, other),
        cascade=cascade,
    )
