"""Write the best trial as ``conf/experiment/best_<study>.yaml``, a reproducible experiment.

The file is a ``# @package _global_`` diff like every experiment: group choices go to the defaults
list (``override /model/head: acrnn``; an ``experiment=demo`` of the sweep command becomes
``/experiment/demo``), values to nested keys. ``python -m derm_exp.train experiment=best_<study>``
then trains the best trial's configuration.

Hydra requires a defaults list to name its plain entries before its overrides, so the included
experiment comes first whatever its place on the sweep command line. The result is the same: the
file's own overrides are registered before the included experiment's (so ``model=...`` of the
trial beats ``experiment=demo``'s ``override /model: tiny``, as on the command line), and
``_self_`` comes last, so the trial's values beat the experiment's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from derm_exp.config import config_groups, normalize_overrides

# Sweep-only settings that must not end up in a single-run experiment.
_SKIP_GROUPS = {"hparams_search"}


def best_experiment_yaml(
    overrides: Sequence[str], header: Sequence[str] = (), groups: set[str] | None = None
) -> str:
    """The experiment file text for a trial's overrides (fixed ones first, sampled ones last)."""
    groups = config_groups() if groups is None else groups
    parser = OverridesParser.create()
    includes: list[str] = []  # plain entries (the sweep's experiment=...): before any override
    group_overrides: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    skipped: list[str] = []
    for override in parser.parse_overrides(normalize_overrides(list(overrides))):
        key = override.key_or_group
        if key.startswith(("hydra.", "hydra/")) or key in _SKIP_GROUPS:
            continue
        if override.is_delete():
            skipped.append(override.input_line or key)
            continue
        value = override.value()
        if key in groups or "/" in key:
            if key == "experiment":
                if value is not None:
                    includes.append(f"/experiment/{value}")
            else:
                group_overrides.append({f"override /{key}": value})
        else:
            _set_nested(values, key, value)
    lines = ["# @package _global_", *(f"# {h}" for h in header)]
    if skipped:
        lines.append(f"# not reproduced (deletions): {' '.join(skipped)}")
    body: dict[str, Any] = {}
    if includes or group_overrides:
        body["defaults"] = [*includes, *group_overrides, "_self_"]
    body.update(values)
    text = OmegaConf.to_yaml(OmegaConf.create(body)) if body else ""
    return "\n".join(lines) + "\n" + text


def write_best_config(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def _set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):  # `a=1` then `a.b=2`: the later, deeper key wins
            node = target[part] = {}
        target = node
    target[leaf] = value
