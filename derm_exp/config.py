"""Config helpers shared by every entrypoint: project root, resolvers, override normalisation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))

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


def unknown_key_message(overrides: Sequence[str], config_name: str) -> str | None:
    """If an override names a key that does not exist, say which keys do (Hydra does not).

    Composes the config once; sweep overrides (``a=1,2``) and Hydra's own keys are skipped.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import DictConfig

    plain = [
        o
        for o in overrides
        if "=" in o
        and not o.startswith(("+", "~", "hydra.", "hydra/"))
        and not re.search(r"=.*(,|\b(range|interval|choice|glob|tag)\()", o)
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        groups_only = [
            o
            for o in plain
            if o.split("=", 1)[0].replace(".", "/") in config_groups() or "/" in o.split("=", 1)[0]
        ]
        try:
            searchpath = [o for o in overrides if o.startswith("hydra.searchpath=")]
            cfg = compose(config_name=config_name, overrides=groups_only + searchpath)
        except MissingConfigException as exc:  # a bad group option
            return missing_option_message(str(exc))
        except Exception:  # anything else: Hydra reports it itself
            return None
    for override in plain:
        key = override.split("=", 1)[0]
        if "/" in key or key in config_groups():
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


def run_hydra_main(main, config_name: str) -> None:
    """Normalise ``sys.argv`` overrides, report unknown keys clearly, then run ``main``."""
    import sys

    args = normalize_overrides(sys.argv[1:])
    sys.argv[1:] = args
    overrides = [a for a in args if not a.startswith("-")]
    if not any(a in ("--help", "-h", "--hydra-help") for a in args):
        message = unknown_key_message(overrides, config_name)
        if message:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
    main()
