"""Config helpers shared by every entrypoint: project root, resolvers, override checks, help."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))

# Why each app has no use for the training groups (the error for e.g. evaluate augment=heavy).
_NOT_USED_BY = {
    "evaluate": "evaluate uses the checkpoint's own config",
    "predict": "predict uses the checkpoint's own config",
    "ensemble": "ensemble uses each member's own config, chosen with models=[...], group=... or "
    "tags.*",
    "prepare_data": "prepare_data only checks the dataset (data.*)",
    "benchmark": "benchmark selects model, data, augment, ... directly",
}

# Autocast settings (trainer.amp, the predictor's amp); resolved by runtime.resolve_precision.
AMP_MODES = ("auto", "fast", "bf16", "fp16", "off")

_OVERRIDE = re.compile(r"^(?P<prefix>\+{0,2}|~)(?P<key>[A-Za-z_][\w.]*)(?P<rest>=.*)?$")


def config_groups(conf_dir: Path = CONF_DIR) -> set[str]:
    """Every config group under ``conf_dir``, as slash paths (``model``, ``model/head``, ...)."""
    return {
        p.relative_to(conf_dir).as_posix()
        for p in conf_dir.rglob("*")
        if p.is_dir() and any(p.glob("*.yaml"))
    }


def normalize_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """Rewrite dotted group selections (``model.head=acrnn``) to Hydra's ``model/head=acrnn``.

    Plain Hydra treats ``model.head=acrnn`` as a value override and silently replaces the whole
    head node with the string "acrnn"; we want it to select the ``acrnn`` option of the
    ``model/head`` group, exactly like the canonical form. Keys that are not groups pass unchanged.
    """
    groups = config_groups(conf_dir)
    out = []
    for arg in overrides:
        m = _OVERRIDE.match(arg)
        if m and "." in m["key"] and m["key"].replace(".", "/") in groups:
            arg = f"{m['prefix']}{m['key'].replace('.', '/')}{m['rest'] or ''}"
        out.append(arg)
    return out


def missing_option_message(hydra_text: str) -> str:
    """Hydra's "Could not find 'group/option'" text as one line listing the valid options."""
    text = hydra_text.split("Config search path:", 1)[0].strip()
    found = re.search(r"Could not find '(?P<path>[^']+)'", text)
    listed = re.search(r"Available options in '(?P<group>[^']+)':(?P<opts>(\s+\S+)+)", text)
    if not (found and listed):
        return text
    group, option = listed["group"], found["path"].rsplit("/", 1)[-1]
    options = ", ".join(listed["opts"].split())
    return (
        f"unknown option '{option}' for config group '{group}'. Valid options: {options}. "
        f"(Select one with {group.replace('/', '.')}=<option>)"
    )


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group (its ``.yaml`` file names), sorted."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _is_hydra_group(group: str) -> bool:
    return group == "hydra" or group.startswith("hydra/")


def app_groups(config_name: str) -> list[str]:
    """The config groups an app composes: Hydra's runtime choices of ``conf/<config_name>.yaml``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True)
    return sorted(g for g in cfg.hydra.runtime.choices if not _is_hydra_group(g))


def _app_config_groups(*, _root_: DictConfig) -> str:
    """``${app_config_groups:}`` in a ``hydra.help.template``: the groups this app composes.

    Hydra's own ``$APP_CONFIG_GROUPS`` lists every group in conf/, including the training-only
    ones that evaluate/predict/ensemble/prepare_data never read.
    """
    choices = _root_.hydra.runtime.choices
    groups = sorted(g for g in choices if not _is_hydra_group(g))
    return "\n".join(f"{g}: {', '.join(group_options(g))}" for g in groups)


if not OmegaConf.has_resolver("app_config_groups"):
    OmegaConf.register_new_resolver("app_config_groups", _app_config_groups)


def _override_key(arg: str) -> str:
    """The key an override sets, without ``+``/``~``: ``+model.head=acrnn`` -> ``model.head``."""
    return arg.split("=", 1)[0].lstrip("+~")


def foreign_group_message(overrides: Sequence[str], config_name: str) -> str | None:
    """One line when an override selects a config group this app does not compose.

    Without it Hydra answers ``evaluate augment=heavy`` with "Could not override 'augment'... To
    append to your default list use +augment=heavy", which would silently do nothing useful.
    """
    groups = config_groups()
    keys = (_override_key(o).replace(".", "/") for o in overrides)
    # hydra/* groups (conf/hydra/launcher/) belong to every app, not to training
    asked = [k for k in keys if k in groups and not _is_hydra_group(k)]
    if not asked:
        return None
    used = app_groups(config_name)
    for group in asked:
        if group not in used:
            why = _NOT_USED_BY.get(config_name, f"{config_name} does not compose it")
            return (
                f"{group.replace('/', '.')} is a training setting; {why} "
                f"({config_name}'s config groups: {', '.join(used) or 'none'})"
            )
    return None


def _value_overrides(overrides: Sequence[str]) -> list[str]:
    """Plain ``key=value`` overrides: no sweeps, no ``+``/``~``, no Hydra keys."""
    return [
        o
        for o in overrides
        if "=" in o
        and not o.startswith(("+", "~", "hydra.", "hydra/"))
        and not re.search(r"=.*(,|\b(range|interval|choice|glob|tag)\()", o)
    ]


def _compose_for_checks(overrides: Sequence[str], config_name: str) -> DictConfig | str | None:
    """The app's config with the group selections of ``overrides``; a message for a bad option;
    None when Hydra itself should report the problem."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    groups = config_groups()
    selections = [
        o
        for o in _value_overrides(overrides)
        if _override_key(o).replace(".", "/") in groups or "/" in _override_key(o)
    ]
    searchpath = [o for o in overrides if o.startswith("hydra.searchpath=")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            return compose(config_name=config_name, overrides=selections + searchpath)
        except MissingConfigException as exc:  # a bad group option
            return missing_option_message(str(exc))
        except Exception:  # anything else: Hydra reports it itself
            return None


def _unknown_key(plain: Sequence[str], cfg: DictConfig) -> str | None:
    groups = config_groups()
    for override in plain:
        key = override.split("=", 1)[0]
        if "/" in key or key in groups:
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if isinstance(parent, DictConfig) and leaf not in parent:
            valid = ", ".join(sorted(str(k) for k in parent))
            where = parent_key or "the top level"
            return (
                f"unknown config key '{key}'. Valid keys under {where}: {valid}. "
                f"(To add a new key on purpose, write +{key}=...)"
            )
        if parent is None or not isinstance(parent, DictConfig):
            return f"unknown config key '{key}': '{parent_key}' is not a config section."
    return None


def as_list(value: object) -> list:
    """A list setting as a list: one value (``bf16``) is a one-item list, null an empty one."""
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return list(value)
    return [value]


def _as_list_override(override: str, cfg: DictConfig) -> str:
    """``benchmark.inference_amp=bf16`` -> ``benchmark.inference_amp=[bf16]`` for a list key.

    Hydra would store the bare string, and code iterating the setting would get "b", "f", ...
    """
    key, value = override.split("=", 1)
    text = value.strip()
    if not isinstance(OmegaConf.select(cfg, key, default=None), ListConfig):
        return override
    if not text or text.startswith("[") or text == "null" or "${" in text:
        return override
    return f"{key}=[{value}]"


def check_overrides(overrides: Sequence[str], config_name: str) -> tuple[list[str], str | None]:
    """(the overrides to run with, an error message or None).

    Composes the config once; sweep overrides (``a=1,2``) and Hydra's own keys are not checked.
    A single value for a list setting becomes a one-item list.
    """
    message = foreign_group_message(overrides, config_name)
    if message:
        return list(overrides), message
    cfg = _compose_for_checks(overrides, config_name)
    if not isinstance(cfg, DictConfig):
        return list(overrides), cfg
    plain = _value_overrides(overrides)
    message = _unknown_key(plain, cfg)
    return [_as_list_override(o, cfg) if o in plain else o for o in overrides], message


def run_hydra_main(main, config_name: str) -> None:
    """Normalise ``sys.argv`` overrides, report unusable ones clearly, then run ``main``.

    Dotted group selections become Hydra's form, a single value given for a list setting becomes
    a one-item list, and a group the app does not compose, an unknown option or an unknown key
    is one ``error:`` line (exit status 2) instead of Hydra's advice.
    """
    import sys

    args = normalize_overrides(sys.argv[1:])
    if not any(a in ("--help", "-h", "--hydra-help") for a in args):
        overrides = [a for a in args if not a.startswith("-")]
        checked, message = check_overrides(overrides, config_name)
        if message:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        rewritten = iter(checked)
        args = [a if a.startswith("-") else next(rewritten) for a in args]
        rewritten = iter(checked)
        args = [a if a.startswith("-") else next(rewritten) for a in args]
    sys.argv[1:] = args
    main()


# ---------------------------------------------------------------------------------------------
# Which option of each group a config holds, without Hydra (runs started from Python, and
# checkpoints written before they recorded it; see tracking.choices and models.checkpoint).

# Groups that are diffs over the others (``# @package _global_``): never derivable from a config.
_GLOBAL_GROUPS = ("experiment", "hparams_search")
_IDENTITY_KEYS = ("name", "mode", "_target_")


@functools.cache
def option_contents(group: str) -> dict[str, dict[str, Any]]:
    """Option name -> its file's content, for one config group under ``conf/``."""
    return {
        p.stem: OmegaConf.to_container(OmegaConf.load(p), resolve=False) or {}
        for p in sorted((CONF_DIR / group).glob("*.yaml"))
        if not p.stem.startswith("best_")
    }


def _identity(option: Mapping[str, Any]) -> tuple[str, Any] | None:
    for key in _IDENTITY_KEYS:
        if key in option:
            return key, option[key]
    return None


def derive_choices(cfg: DictConfig | Mapping[str, Any]) -> dict[str, str]:
    """The option of each group that ``cfg`` holds, found by its identifying key (``name``,
    ``mode`` or ``_target_``; groups with a single option: that option); groups it cannot tell
    apart are left out."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    out = {}
    for group in sorted(config_groups(CONF_DIR)):
        if group in _GLOBAL_GROUPS:
            continue
        node = OmegaConf.select(cfg, group.replace("/", "."), default=None)
        options = option_contents(group)
        if not isinstance(node, DictConfig) or not options:
            continue
        found = []
        for option, content in options.items():
            ident = _identity(content)
            if ident is None:
                if len(options) == 1:
                    found.append(option)
            elif node.get(ident[0]) == ident[1]:
                found.append(option)
        if len(found) == 1:
            out[group] = found[0]
    return out
