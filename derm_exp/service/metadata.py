"""Patient metadata sent with ``POST /predict`` (form fields ``age``, ``sex``, ``localization``).

Research and education only; not a medical device. Do not use for diagnosis.

A metadata-fusion model encodes the fields with the encoder stored in its checkpoint
(:class:`~derm_exp.data.metadata_encoding.MetadataEncoder`), in the upload's preparation thread,
so a bad value (a non-numeric age, ...) is refused with a 422 before the request is queued, with
the encoder's own message (an age outside 0-120 years among them). Every request then
carries its own metadata (or none) through the micro-batcher. An image-only model ignores the
fields, and the answer says so (``metadata_used: false``). ``GET /model`` describes the inputs
(:func:`metadata_card`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from derm_exp.data.metadata_encoding import (
    AGE_RANGE,
    CATEGORICAL,
    METADATA_COLUMNS,
    MetadataEncoder,
)
from derm_exp.errors import UserError
from derm_exp.inference.prediction_model import PredictionModel
from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.service.limits import RequestError

FIELDS: tuple[str, ...] = METADATA_COLUMNS  # the form fields, as the encoder names them
MAX_FIELD_CHARS = 64
MISSING_RULE = (
    "A field left out, empty or 'unknown' is encoded as missing (its own <field>_missing flag; "
    "the age then counts as 0 after normalisation, never as the mean alone), exactly as training "
    "images without it were; with no field at all the model sees 'nothing known'."
)
UNKNOWN_RULE = (
    "A sex or localization value not seen in training is encoded as <field>_unknown "
    "(answered, with the field listed under metadata.unknown)."
)


def predictors(loaded: PredictionModel) -> list[SkinLesionPredictor]:
    """The classifier, or the ensemble's members."""
    return list(loaded.model.predictors) if loaded.is_ensemble else [loaded.model]


def encoders(loaded: PredictionModel) -> list[MetadataEncoder]:
    """The metadata encoders of the model's metadata-fusion classifiers (empty: image-only)."""
    return [p.metadata_encoder for p in predictors(loaded) if p.metadata_encoder is not None]


def form_fields(**given: str | None) -> dict[str, str]:
    """The fields that were filled in (stripped; empty ones dropped); 422 for a long value."""
    out: dict[str, str] = {}
    for name, value in given.items():
        text = (value or "").strip()
        if len(text) > MAX_FIELD_CHARS:
            raise RequestError(422, f"{name} is longer than {MAX_FIELD_CHARS} characters")
        if text:
            out[name] = text
    return out


@dataclass(frozen=True)
class MetadataUse:
    """How one request's metadata reaches the model, and what the answer says about it."""

    model_uses_metadata: bool
    given: dict[str, str] = field(default_factory=dict)
    used: dict[str, Any] = field(default_factory=dict)  # fields the model reads as known
    missing: list[str] = field(default_factory=list)  # model inputs treated as missing
    unknown: list[str] = field(default_factory=list)  # values not seen in training
    ignored: list[str] = field(default_factory=list)  # given, but no input of this model
    encoded: torch.Tensor | None = None  # (M,): the first metadata classifier's encoding

    @property
    def record(self) -> dict[str, str] | None:
        """The dict for ``predict_batch(metadata=[...])`` (None: nothing given or used)."""
        return dict(self.given) if self.model_uses_metadata and self.given else None

    def response(self) -> dict[str, Any]:
        """``metadata_used`` and ``metadata`` of the ``POST /predict`` answer."""
        return {
            "metadata_used": bool(self.used),
            "metadata": {
                "model_uses_metadata": self.model_uses_metadata,
                "given": dict(self.given),
                "used": dict(self.used),
                "missing": list(self.missing),
                "unknown": list(self.unknown),
                "ignored": list(self.ignored),
                "note": self.note(),
            },
        }

    def note(self) -> str:
        """One sentence for people (the web page shows it)."""
        if not self.model_uses_metadata:
            ignored = f": {', '.join(self.ignored)} ignored" if self.ignored else ""
            return f"this model does not use patient metadata{ignored}"
        parts = [f"used {', '.join(self.used)}" if self.used else "no patient metadata used"]
        if self.missing:
            parts.append(f"{', '.join(self.missing)} treated as missing")
        for name in self.unknown:
            parts.append(f"{name} {self.given[name]!r} not seen in training (encoded as unknown)")
        if self.ignored:
            parts.append(f"{', '.join(self.ignored)} not an input of this model (ignored)")
        return "; ".join(parts)


def resolve(models: Sequence[SkinLesionPredictor], given: Mapping[str, str]) -> MetadataUse:
    """Validate ``given`` with each metadata classifier's encoder (422 for a bad value) and say
    which fields each reads as known, unseen or missing."""
    given = dict(given)
    users = [p for p in models if p.metadata_encoder is not None]
    if not users:
        return MetadataUse(False, given, ignored=list(given))
    used: dict[str, Any] = {}
    unknown: set[str] = set()
    columns: list[str] = []
    first: torch.Tensor | None = None
    for predictor in users:
        encoder = predictor.metadata_encoder
        assert encoder is not None
        vector = _encode(predictor, given)
        first = vector if first is None else first
        names = encoder.feature_names
        for col in encoder.columns:
            columns += [col] if col not in columns else []
            flag = "age_missing" if col == "age" else f"{col}_missing"
            if vector[names.index(flag)] == 1:
                continue
            used[col] = float(given[col]) if col == "age" else given[col].lower()
            if col in CATEGORICAL and vector[names.index(f"{col}_unknown")] == 1:
                unknown.add(col)
    return MetadataUse(
        True,
        given,
        used={c: used[c] for c in FIELDS if c in used},
        missing=[c for c in columns if c not in used],
        unknown=[c for c in FIELDS if c in unknown],
        ignored=[c for c in given if c not in columns],
        encoded=first if given else None,
    )


def _encode(predictor: SkinLesionPredictor, given: Mapping[str, str]) -> torch.Tensor:
    """The (M,) encoding of one request by the predictor's own encoder (its validation)."""
    try:
        encoded = predictor.encode_metadata([dict(given) or None], 1)
    except UserError as exc:
        raise RequestError(422, f"invalid patient metadata: {exc}") from None
    assert encoded is not None
    return encoded[0]


def metadata_card(loaded: PredictionModel) -> dict[str, Any]:
    """The ``metadata`` entry of ``GET /model``: whether the model uses patient metadata and,
    if so, its inputs (fields, the values seen in training) and how missing values count."""
    found = encoders(loaded)
    if not found:
        return {
            "uses_metadata": False,
            "fields": [],
            "note": "image-only model: age, sex and localization are accepted and ignored",
        }
    return {
        "uses_metadata": True,
        "fields": [_field_card(name, found) for name in FIELDS if _used_by(name, found)],
        "missing": MISSING_RULE,
        "unknown": UNKNOWN_RULE,
        "members_using_metadata": sum(p.metadata_encoder is not None for p in predictors(loaded)),
    }


def _used_by(name: str, found: Sequence[MetadataEncoder]) -> list[MetadataEncoder]:
    return [e for e in found if name in e.columns]


def _field_card(name: str, found: Sequence[MetadataEncoder]) -> dict[str, Any]:
    """One input field: its type and, from the checkpoint's encoder(s), what training saw."""
    using = _used_by(name, found)
    if name == "age":
        low, high = AGE_RANGE
        return {
            "name": "age",
            "type": "number",
            "unit": "years",
            "range": [low, high],
            "training_mean": _one_or_all([e.age_mean for e in using]),
            "training_std": _one_or_all([e.age_std for e in using]),
        }
    values = sorted({v for e in using for v in e.categories.get(name, ())})
    return {"name": name, "type": "category", "values": values}


def _one_or_all(values: list[float]) -> float | list[float]:
    """One classifier's value, or every ensemble member's."""
    return values[0] if len(values) == 1 else values
