"""What the registered model's seed aliases mean, and moving them when a version is registered.

* ``latest-seed-<n>``: the newest registered version trained with seed ``n``.
* ``seed-<n>``: the best registered version trained with seed ``n``, judged by validation only:
  when a version is registered, it points at the best of the seed's versions validated on the
  same split (``data_fingerprint``) on the new run's ``trainer.monitor`` (version tag
  ``monitor``, compared on the ``val_*`` tags in its ``monitor_mode``; a tie goes to the lower
  validation loss, then to the older version, and a degenerate model never beats one that is
  not: :func:`derm_exp.training.selection.is_better`, the rule that picks a run's best epoch).
  So it moves to a new version only when that one is better; versions trained on other data
  (another split) do not compete, and the new version takes the alias from them.

MLflow reserves the alias ``latest``; ``models:/derm-classifier/latest`` already resolves to the
newest version of any seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from derm_exp.tracking.registry_search import VAL_PREFIX
from derm_exp.training.selection import Score, is_better


def seed_alias(seed: str | int) -> str:
    return f"seed-{seed}"


def latest_seed_alias(seed: str | int) -> str:
    return f"latest-seed-{seed}"


def monitor_tag(monitor: str) -> str:
    """The version tag of a validation metric: ``val/macro_f1`` -> ``val_macro_f1``."""
    return VAL_PREFIX + monitor.removeprefix("val/").removeprefix(VAL_PREFIX)


def _score(tags: Mapping[str, str], key: str) -> Score:
    loss = tags.get(f"{VAL_PREFIX}loss", tags.get(f"{VAL_PREFIX}nll"))
    return Score(
        float(tags[key]),
        float(loss) if loss is not None else math.inf,
        degenerate=tags.get("degenerate") == "true",
    )


def best_for_seed(new: Mapping[str, str], others: Sequence[Mapping[str, str]]) -> int | None:
    """Which version should hold ``seed-<n>`` once a version tagged ``new`` is registered: the
    index of one of ``others`` (the seed's earlier versions, oldest first), or None for the new
    one. Only versions validated on the new one's split (``data_fingerprint``) that carry its
    monitor metric compete; a tie keeps the older version."""
    key = monitor_tag(new.get("monitor", "val/balanced_accuracy"))
    mode = new.get("monitor_mode", "max")
    best: tuple[int | None, Mapping[str, str]] | None = None
    candidates = [(i, tags) for i, tags in enumerate(others)] + [(None, new)]
    for index, tags in candidates:
        if tags.get("data_fingerprint") != new.get("data_fingerprint") or key not in tags:
            continue
        if best is None or is_better(_score(tags, key), _score(best[1], key), mode):
            best = (index, tags)
    return best[0] if best is not None else None


@dataclass(frozen=True)
class AliasUpdate:
    """The aliases a new version got; ``holder`` is the version holding ``kept`` instead."""

    moved: tuple[str, ...]
    kept: str | None = None
    holder: str | None = None
    reason: str = ""

    def describe(self) -> str:
        text = "alias" + ("es " if len(self.moved) > 1 else " ") + ", ".join(self.moved)
        if self.kept:
            text += f"; {self.kept} is version {self.holder}"
        return text + (f": {self.reason}" if self.reason else "")


def update_seed_aliases(
    client: MlflowClient,
    name: str,
    version: str,
    tags: Mapping[str, str],
    others: Sequence[ModelVersion],
) -> AliasUpdate:
    """Point ``latest-seed-<n>`` at the new ``version`` and ``seed-<n>`` at the best version of
    that seed (:func:`best_for_seed`; ``others``: the seed's other versions)."""
    seed = tags.get("seed")
    if not seed:
        return AliasUpdate(())
    latest, best = latest_seed_alias(seed), seed_alias(seed)
    client.set_registered_model_alias(name, latest, version)
    others = sorted(
        (v for v in others if str(v.version) != str(version)), key=lambda v: int(v.version)
    )
    winner = best_for_seed(tags, [v.tags for v in others])
    if winner is None:
        client.set_registered_model_alias(name, best, version)
        return AliasUpdate((latest, best))
    holder = others[winner]
    client.set_registered_model_alias(name, best, str(holder.version))
    monitor = tags.get("monitor", "val/balanced_accuracy")
    key = monitor_tag(monitor)
    flag = " (degenerate)" if tags.get("degenerate") == "true" else ""
    reason = f"{monitor} {float(holder.tags[key]):.4f} vs {float(tags[key]):.4f}{flag}"
    return AliasUpdate((latest,), kept=best, holder=str(holder.version), reason=reason)
