"""Which option of each config group a run selected, as MLflow params, tags and a run name.

The options are what users type (``model.head=acrnn``, ``loss=label_smoothing``), so they are
what runs and registered versions are tagged and queried with (``tags.loss=label_smoothing``):

* tag ``<group>=<option>`` for every group (``model/head`` is tagged ``head``), e.g.
  ``model=tiny``, ``head=acrnn``, ``loss=label_smoothing``, ``augment=light``,
  ``experiment=demo``; param ``choice.<group>`` holds the same (``choice.model/head``);
* ``head_class`` / ``loss_class``: the classes behind them (``ACRNNHead``, ``CrossEntropyLoss``),
  which is what the ``head`` / ``loss`` tags held before option names. :func:`legacy_option`
  maps such an old tag back to its option so queries by option name still find old versions.

The choices come from Hydra (``HydraConfig.get().runtime.choices``). Where Hydra is not running
(``fit(cfg)`` called from Python) they are derived from the config by matching each group's
option files in ``conf/`` on their identifying key (``name``, ``mode`` or ``_target_``).
A resumed run keeps the choices stored in its checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from derm_exp.config import derive_choices
from derm_exp.config import option_contents as _options

# Tag key of a group's choice where it differs from the group name.
GROUP_TAGS = {"model/head": "head", "model/metadata": "metadata"}
# Tag -> (group, config key of the class) for the tags that used to hold class names.
CLASS_TAGS = {"head": ("model/head", "_target_"), "loss": ("loss", "criterion._target_")}
PARAM_PREFIX = "choice."


def hydra_choices() -> dict[str, str] | None:
    """The running Hydra job's selected option per config group (Hydra's own groups left out);
    None outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices, resolve=True)
    return {
        str(k): str(v)
        for k, v in choices.items()
        if v is not None and not str(k).startswith("hydra")
    }


def config_choices(cfg: DictConfig, checkpoint: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A resumed run's choices (``checkpoint`` given): those stored in it, else derived from its
    config (never the resuming command's, which selects nothing); a new run's: Hydra's, else
    :func:`derive_choices`."""
    if checkpoint is not None:
        return dict(checkpoint.get("choices") or derive_choices(cfg))
    return hydra_choices() or derive_choices(cfg)


def tag_key(group: str) -> str:
    return GROUP_TAGS.get(group, group)


def choice_tags(choices: Mapping[str, str]) -> dict[str, str]:
    """``{tag: option}`` for every group (``head`` for ``model/head``)."""
    return {tag_key(g): str(o) for g, o in choices.items()}


def choice_params(choices: Mapping[str, str]) -> dict[str, str]:
    """``{"choice.<group>": option}``."""
    return {f"{PARAM_PREFIX}{g}": str(o) for g, o in choices.items()}


def class_tags(cfg: DictConfig) -> dict[str, str]:
    """``head_class`` / ``loss_class``: short class names of the head and the criterion."""
    out = {}
    for tag, (group, key) in CLASS_TAGS.items():
        target = OmegaConf.select(cfg, f"{group.replace('/', '.')}.{key}", default=None)
        if target:
            out[f"{tag}_class"] = str(target).rsplit(".", 1)[-1]
    return out


def default_run_name(cfg: DictConfig, choices: Mapping[str, str]) -> str:
    """``<backbone>-<head>[-<metadata>]-<loss>-s<seed>``, e.g.
    ``test_efficientnet-acrnn-label_smoothing-s42`` (a part that is unknown is left out; the
    ``model/metadata`` option only when it is not ``none``)."""
    fusion = choices.get("model/metadata")
    fusion = None if fusion in (None, "none") else fusion
    parts = [cfg.model.name, choices.get("model/head"), fusion, choices.get("loss"), f"s{cfg.seed}"]
    return "-".join(str(p) for p in parts if p)


# ---------------------------------------------------------------------------------------------
# Versions tagged before option names: ``head``/``loss`` held class names.


def class_name_of(tag: str, option: str) -> str | None:
    """The class behind option ``option`` of ``tag`` (``acrnn`` -> ``ACRNNHead``)."""
    group, key = CLASS_TAGS[tag]
    content = _options(group).get(option)
    if content is None:
        return None
    target = OmegaConf.select(OmegaConf.create(content), key, default=None)
    return str(target).rsplit(".", 1)[-1] if target else None


def options_of_class(tag: str, cls: str) -> list[str]:
    """The options of ``tag``'s group whose class is ``cls`` (``CrossEntropyLoss`` ->
    ``cross_entropy``, ``label_smoothing``)."""
    return [o for o in _options(CLASS_TAGS[tag][0]) if class_name_of(tag, o) == cls]


def legacy_option(tag: str, cls: str, params: Callable[[], Mapping[str, str]]) -> str | None:
    """The option an old ``tag=<class>`` stands for: the only option with that class, or the
    one whose class arguments equal the run's logged ``params`` (read only when needed)."""
    candidates = options_of_class(tag, cls)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    group, key = CLASS_TAGS[tag]
    node_key = key.rsplit(".", 1)[0] if "." in key else ""
    prefix = ".".join(p for p in (group.replace("/", "."), node_key) if p)
    logged = params()
    matches = []
    for option in candidates:
        content = _options(group)[option]
        args = OmegaConf.select(OmegaConf.create(content), node_key) if node_key else content
        if all(
            logged.get(f"{prefix}.{k}") == str(v)
            for k, v in (args or {}).items()
            if not isinstance(v, dict | list)
        ):
            matches.append(option)
    return matches[0] if len(matches) == 1 else None


def other_spellings(
    tags: Mapping[str, Any], params_of: Callable[[str], Mapping[str, str]]
) -> list[tuple[dict[str, Any], Callable[[Any], bool]]]:
    """Extra version queries so that a ``head``/``loss`` condition matches both spellings.

    Returns ``(tags, keep)`` pairs: search with ``tags`` and keep the versions ``keep`` accepts.
    An option name (``loss=label_smoothing``) also matches versions tagged before option names
    (``loss=CrossEntropyLoss``, no ``loss_class`` tag) when :func:`legacy_option` maps them to
    it (``params_of(run_id)``: the run's logged params); a class name (``head=ACRNNHead``) also
    matches newer versions by their ``head_class`` tag.
    """
    asked = {k: str(v) for k, v in tags.items() if k in CLASS_TAGS and v is not None}
    options = {k: v for k, v in asked.items() if class_name_of(k, v) is not None}
    classes = {k: v for k, v in asked.items() if k not in options and options_of_class(k, v)}
    queries: list[tuple[dict[str, Any], Callable[[Any], bool]]] = []
    if options:

        def legacy(version: Any) -> bool:
            if any(f"{k}_class" in version.tags for k in CLASS_TAGS):
                return False  # tagged with option names already: the main query decides
            return all(
                legacy_option(k, version.tags.get(k, ""), lambda: params_of(version.run_id))
                == option
                for k, option in options.items()
            )

        old = {**tags, **{k: class_name_of(k, v) for k, v in options.items()}}
        queries.append((old, legacy))
    if classes:
        new = {k: v for k, v in tags.items() if k not in classes}
        new.update({f"{k}_class": v for k, v in classes.items()})
        queries.append((new, lambda version: True))
    return queries
