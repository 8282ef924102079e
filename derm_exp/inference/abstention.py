"""When a prediction abstains: the decision and its machine-readable reasons.

Research and education only; not a medical device.

Every prediction dict carries ``decision`` (``"predict"`` or ``"abstain"``), ``reasons`` (empty
when predicting) and ``abstention`` (the policy that decided: ``threshold``, its ``target``,
where it came from). The probabilities are always reported; abstaining means "do not act on
this answer". Reasons, in this order:

* ``low_confidence``: the confidence (largest calibrated probability) is below ``threshold``,
  fitted at the end of training on the validation split for a target coverage or risk
  (``abstain.coverage`` / ``abstain.risk``, :func:`derm_exp.evaluation.selective.fit_threshold`)
  and stored in the checkpoint. A checkpoint without one (older runs) has ``threshold: None``:
  no confidence abstention, the other checks still apply;
* ``tta_disagreement``: with TTA, the standard deviation across views of the predicted class's
  probability (``view_std``) is above ``max_view_std``;
* ``ensemble_disagreement``: the share of ensemble members whose own top class differs from the
  ensemble's (``disagreement``) is above ``max_disagreement`` (default 0: any member differing),
  or the members' spread of that class's probability (``std``) is above ``max_member_std``;
* the input-quality gate's reasons (:mod:`derm_exp.inference.input_quality`):
  ``input_too_small``, ``extreme_aspect_ratio``, ``nearly_uniform``, ``not_colour``.

An ensemble has no threshold of its own: it uses the mean of its members' thresholds (an
approximation: averaging members changes the confidence distribution, so the realised coverage
may differ from the members' target) unless ``abstain.threshold`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from derm_exp.errors import PredictionInputError
from derm_exp.inference.input_quality import QUALITY_REASONS, QualityThresholds

REASONS = ("low_confidence", "tta_disagreement", "ensemble_disagreement", *QUALITY_REASONS)
DEFAULT_MAX_VIEW_STD = 0.15
DEFAULT_MAX_DISAGREEMENT = 0.0
DEFAULT_MAX_MEMBER_STD = 0.25
_LIMITS = ("threshold", "max_view_std", "max_disagreement", "max_member_std")


@dataclass(frozen=True)
class AbstentionPolicy:
    """The limits a prediction must meet to be given (see the module docstring)."""

    threshold: float | None = None
    max_view_std: float | None = DEFAULT_MAX_VIEW_STD
    max_disagreement: float | None = DEFAULT_MAX_DISAGREEMENT
    max_member_std: float | None = DEFAULT_MAX_MEMBER_STD
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    enabled: bool = True
    target: dict[str, float] | None = None
    source: str = "none"

    @classmethod
    def from_checkpoint(cls, entry: Mapping[str, Any] | None) -> AbstentionPolicy:
        """From a checkpoint's ``abstention`` entry; None (older checkpoints): no threshold."""
        if not entry:
            return cls()
        threshold = entry.get("threshold")
        return cls(
            threshold=None if threshold is None else float(threshold),
            max_view_std=entry.get("max_view_std", DEFAULT_MAX_VIEW_STD),
            quality=QualityThresholds.from_mapping(entry.get("quality")),
            target=dict(entry["target"]) if entry.get("target") else None,
            source="none" if threshold is None else "checkpoint (fitted on validation)",
        )

    @classmethod
    def for_ensemble(cls, members: Sequence[AbstentionPolicy]) -> AbstentionPolicy:
        """The members' mean threshold (None unless every member has one); first member's
        other limits."""
        first = members[0] if members else cls()
        thresholds = [m.threshold for m in members]
        if members and all(t is not None for t in thresholds):
            mean = sum(thresholds) / len(thresholds)  # type: ignore[arg-type]
            return replace(first, threshold=mean, source="mean of the members' thresholds")
        return replace(first, threshold=None, target=None, source="none")

    def with_overrides(self, values: Mapping[str, Any] | None) -> AbstentionPolicy:
        """A copy with the non-null keys of a config's ``abstain`` block (``enabled``,
        ``threshold``, ``max_view_std``, ``max_disagreement``, ``max_member_std``, ``quality``)."""
        values = dict(values or {})
        known = {"enabled", "quality", *_LIMITS}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PredictionInputError(
                f"unknown abstain key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        out = self
        for key in _LIMITS:
            value = values.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise PredictionInputError(f"abstain.{key}={value!r}: a number >= 0 or null")
            out = replace(out, **{key: float(value)})
            if key == "threshold":
                out = replace(out, target=None, source="config (abstain.threshold)")
        if values.get("quality"):
            out = replace(out, quality=out.quality.updated(dict(values["quality"])))
        if values.get("enabled") is not None:
            out = replace(out, enabled=bool(values["enabled"]))
        return out

    def reasons(
        self,
        confidence: float,
        quality: Sequence[str] | None = None,
        view_std: float | None = None,
        disagreement: float | None = None,
        member_std: float | None = None,
    ) -> list[str]:
        """The reasons to abstain, in :data:`REASONS` order ([] = predict)."""
        if not self.enabled:
            return []
        found = set(quality or ())

        def above(value: float | None, limit: float | None) -> bool:
            return value is not None and limit is not None and value > limit

        if self.threshold is not None and confidence < self.threshold:
            found.add("low_confidence")
        if above(view_std, self.max_view_std):
            found.add("tta_disagreement")
        if above(disagreement, self.max_disagreement) or above(member_std, self.max_member_std):
            found.add("ensemble_disagreement")
        return [r for r in REASONS if r in found]

    def describe(self) -> dict[str, Any]:
        """The ``abstention`` entry of a prediction dict."""
        return {
            "threshold": self.threshold,
            "target": dict(self.target) if self.target else None,
            "source": self.source,
            "enabled": self.enabled,
        }

    def decide(self, confidence: float, **signals: Any) -> dict[str, Any]:
        """``decision``, ``reasons`` and ``abstention`` for one prediction (see :meth:`reasons`
        for the signals)."""
        reasons = self.reasons(confidence, **signals)
        return {
            "decision": "abstain" if reasons else "predict",
            "reasons": reasons,
            "abstention": self.describe(),
        }
