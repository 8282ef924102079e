"""Hydra sweep syntax -> Optuna distributions, and sampled values -> Hydra overrides.

The syntax is the familiar one of hydra-optuna-sweeper, parsed by Hydra's own override parser::

    optimizer.lr: tag(log, interval(1e-5, 1e-2))   # float, log scale
    optimizer.weight_decay: interval(0.0, 0.1)       # float, uniform
    trainer.max_epochs: int(interval(5, 20))         # int, uniform
    data.batch_size: range(16, 65, 16)               # int 16, 32, 48, 64 (stop is exclusive)
    model/head: choice(simple, acrnn)                # categorical (group options work too)
    data.image_size: 64                              # fixed: passed to every trial
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

_PLAIN = re.compile(r"^[A-Za-z_][\w\-./]*$")
_RESERVED = {"true", "false", "null", "nan", "inf"}


class SearchSpaceError(ValueError):
    """A search-space entry cannot be turned into an Optuna distribution."""


@dataclass(frozen=True)
class SearchSpace:
    """Sampled parameters (name -> distribution) and fixed overrides (key -> ``key=value``)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """Hydra overrides for one trial: the fixed ones, then the sampled values."""
        return [*self.fixed.values(), *(f"{k}={format_value(v)}" for k, v in params.items())]

    def sample(self, trial: Any) -> dict[str, Any]:
        """Suggest every parameter through the public ``optuna.Trial.suggest_*`` API."""
        params: dict[str, Any] = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, list(dist.choices))
            elif isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(
                    name, dist.low, dist.high, step=dist.step, log=dist.log
                )
            else:
                assert isinstance(dist, FloatDistribution)
                params[name] = trial.suggest_float(
                    name, dist.low, dist.high, step=dist.step, log=dist.log
                )
        return params

    def categorical(self) -> list[str]:
        """Names of the categorical parameters."""
        return [k for k, d in self.distributions.items() if isinstance(d, CategoricalDistribution)]

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, stored on the study to detect a changed search space."""
        return {k: json.loads(distribution_to_json(d)) for k, d in self.distributions.items()}


def format_value(value: Any) -> str:
    """Render a sampled value as a Hydra override value (``null``, ``true``, quoted strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def param_entry(item: tuple[str, Any]) -> str:
    """``hydra.sweeper.params`` item -> override text (strings are sweep syntax, as written)."""
    from omegaconf import OmegaConf

    key, value = item
    if isinstance(value, str):
        return f"{key}={value}"
    if isinstance(value, list | dict):
        return f"{key}={json.dumps(OmegaConf.to_container(OmegaConf.create(value)))}"
    return f"{key}={format_value(value)}"


def parse_search_space(entries: Sequence[str], config_loader: Any = None) -> SearchSpace:
    """Parse ``key=value`` entries; sweeps become distributions, plain values fixed overrides.

    Later entries win, so command-line overrides placed after ``hydra.sweeper.params`` can fix a
    searched key or search a fixed one. ``config_loader`` enables ``glob(...)`` over group options.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for text in entries:
        try:
            override = parser.parse_override(text)
        except HydraException as exc:
            raise SearchSpaceError(f"cannot parse search-space entry {text!r}: {exc}") from exc
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = to_distribution(override, text)
        else:
            fixed[key] = text
    return SearchSpace(distributions, fixed)


def to_distribution(override: Override, text: str) -> BaseDistribution:
    """The Optuna distribution of one sweep override (interval, range, choice or glob)."""
    value = override.value()
    tags = set(getattr(value, "tags", None) or ())
    if tags - {"log"}:
        raise SearchSpaceError(
            f"{text}: unknown tag(s) {sorted(tags - {'log'})}; the sweeper understands only "
            "tag(log, interval(a, b))"
        )
    log = "log" in tags
    try:
        if isinstance(value, IntervalSweep):
            return _interval(value, log, text)
        values = list(override.sweep_iterator())
        if isinstance(value, RangeSweep):
            return _range(values, abs(value.step), log, text)
        if log:
            raise SearchSpaceError(f"{text}: `log` applies to interval(...) and range(...) only")
        return _choice(values, text)
    except (HydraException, ValueError) as exc:
        if isinstance(exc, SearchSpaceError):
            raise
        raise SearchSpaceError(f"{text}: {exc}") from exc


def _interval(value: IntervalSweep, log: bool, text: str) -> BaseDistribution:
    low, high = value.start, value.end
    if low is None or high is None or not low < high:
        raise SearchSpaceError(f"{text}: interval(a, b) needs a < b")
    if log and low <= 0:
        raise SearchSpaceError(f"{text}: a log-scale interval needs a > 0")
    if isinstance(low, int) and isinstance(high, int):
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)


def _range(values: list[Any], step: float, log: bool, text: str) -> BaseDistribution:
    if not values:
        raise SearchSpaceError(f"{text}: the range is empty")
    if log:
        raise SearchSpaceError(
            f"{text}: Optuna cannot combine a step with a log scale; use "
            "tag(log, int(interval(a, b))) or choice(...)"
        )
    low, high = min(values), max(values)
    if all(isinstance(v, int) for v in values):
        return IntDistribution(low, high, step=int(step))
    return FloatDistribution(float(low), float(high), step=float(step))


def _choice(values: list[Any], text: str) -> CategoricalDistribution:
    for v in values:
        if v is not None and not isinstance(v, str | int | float | bool):
            raise SearchSpaceError(
                f"{text}: choice values must be strings, numbers, booleans or null (got {v!r})"
            )
    if len({json.dumps(v) for v in values}) != len(values):
        raise SearchSpaceError(f"{text}: a choice lists the same value twice")
    if not values:
        raise SearchSpaceError(f"{text}: the choice is empty")
    return CategoricalDistribution(values)
