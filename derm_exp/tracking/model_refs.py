"""Model references, parsed once: what ``model=``, ``models=[...]``, ``resume=`` and the Python
loaders accept.

A reference is one of

* a checkpoint file, or a training output folder holding one (``checkpoint_best.pt``; for
  ``resume=``, ``checkpoint_latest.pt``);
* an MLflow run id (32 hex characters): the run's logged ``checkpoints/`` artifact;
* a registered model URI: ``models:/NAME/VERSION``, ``models:/NAME/latest`` (the newest
  version) or ``models:/NAME@ALIAS``: the registered version's own checkpoint.

A ``model=`` value may also be a list of references (an ensemble), or be replaced by
``group=<sweep id>`` (the registered versions of one sweep). Parsing needs neither MLflow nor
torch (only the file system); :mod:`derm_exp.tracking.model_lookup` finds what a run id or a URI
names in MLflow, and :mod:`derm_exp.inference.sources` decides what to load. Every tool reports
a bad reference with the same messages (:class:`ModelRefError`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from derm_exp.errors import ModelSourceError, RegistryError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))$")
BEST_CHECKPOINT = "checkpoint_best.pt"
LATEST_CHECKPOINT = "checkpoint_latest.pt"
ALL_KINDS = ("checkpoint", "run", "registry")
URI_FORMS = "models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"
NO_MODEL = (
    "no model given: pass model=<checkpoint, run id or models:/ URI>, model=[ref1,ref2,...] "
    "(an ensemble) or group=<sweep id>"
)


class ModelRefError(ModelSourceError, RegistryError):
    """A model reference is malformed or names nothing: no such file, run or model version.

    Both a :class:`ModelSourceError` (what loaders raise) and a :class:`RegistryError` (what
    registry queries raise), so callers catching either see it.
    """


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. ``kind`` is ``checkpoint`` (``path`` set: the file itself, or the
    checkpoint inside the given folder), ``run`` (``run_id``) or ``registry`` (``name`` and
    ``version`` -- a number or ``latest`` -- or ``alias``). ``option`` names the setting it came
    from, for messages (``model``, ``resume``)."""

    text: str
    kind: str
    option: str = "model"
    path: Path | None = None
    run_id: str | None = None
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (registry references only)."""
        return (
            f"models:/{self.name}@{self.alias}"
            if self.alias
            else f"models:/{self.name}/{self.version}"
        )

    @property
    def label(self) -> str:
        """``<option>=<reference>``, as error messages name it."""
        return f"{self.option}={self.text}"


def parse_registry_uri(text: str, option: str = "model") -> ModelRef:
    """A ``models:/`` URI as a :class:`ModelRef`; anything else is a :class:`ModelRefError`."""
    m = MODELS_URI.match(text.strip())
    if not m:
        raise ModelRefError(f"{option}={text}: not a registered model URI; write {URI_FORMS}")
    return ModelRef(
        text.strip(), "registry", option, name=m["name"], version=m["version"], alias=m["alias"]
    )


def parse_ref(
    ref: str | os.PathLike | ModelRef,
    option: str = "model",
    checkpoint: str = BEST_CHECKPOINT,
    kinds: Sequence[str] = ALL_KINDS,
) -> ModelRef:
    """Parse one reference (see the module docstring). An existing path wins over the other
    readings; a folder means the ``checkpoint`` file inside it. ``kinds`` are the kinds the
    setting accepts (``resume=`` takes no registered model)."""
    if isinstance(ref, ModelRef):
        return ref
    text = str(ref).strip()
    if not text:
        raise ModelRefError(f"no model given: pass {option}=<{_forms(kinds)}>")
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / checkpoint
        if not path.is_file():
            raise ModelRefError(f"{option}={text}: folder without a {checkpoint}")
    if path.is_file():
        return ModelRef(text, "checkpoint", option, path=path.resolve())
    if text.startswith("models:/"):
        parsed = parse_registry_uri(text, option)
        if "registry" not in kinds:
            raise ModelRefError(
                f"{option}={text}: a registered model cannot be used here; give its training "
                f"run's id ({option}=<run id>) or a {checkpoint}"
            )
        return parsed
    if RUN_ID.match(text) and "run" in kinds:
        return ModelRef(text, "run", option, run_id=text)
    what = "not an MLflow run id (32 hex characters)"
    if "registry" in kinds:
        what += " or a registered model URI (models:/NAME@alias)"
    raise ModelRefError(f"{option}={text}: no such checkpoint file, and {what}")


def _forms(kinds: Sequence[str]) -> str:
    names = [
        {"checkpoint": "checkpoint", "run": "run id", "registry": "models:/ URI"}[k] for k in kinds
    ]
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def ref_list(value: object) -> list[str]:
    """A ``model=`` value as a list: nothing -> [], one reference -> [it], a list -> its items."""
    if value is None:
        return []
    if isinstance(value, Sequence) and not isinstance(value, str):  # also omegaconf's ListConfig
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value).strip()] if str(value).strip() else []


def parse_selection(
    value: object, group: str | None = None, option: str = "model"
) -> list[ModelRef]:
    """The references of a ``model=`` value (one or a list), each parsed; ``group`` (a sweep id)
    replaces them. Refuses both and neither."""
    texts = ref_list(value)
    if group is not None and texts:
        raise ModelRefError(f"give either {option}=... or group=<sweep id>, not both")
    if group is None and not texts:
        raise ModelRefError(NO_MODEL)
    return [parse_ref(text, option) for text in texts]
