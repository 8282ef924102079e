"""Hydra sweep syntax -> Optuna distributions, and sampled values back to overrides."""

from __future__ import annotations

import re

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from derm_exp.tuning.search_space import SearchSpaceError, format_value, parse_search_space


def _dist(entry: str):
    space = parse_search_space([entry])
    assert not space.fixed
    [dist] = space.distributions.values()
    return dist


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("optimizer.lr=interval(0.001, 0.1)", FloatDistribution(0.001, 0.1)),
        ("optimizer.lr=tag(log, interval(1e-5, 1e-2))", FloatDistribution(1e-5, 1e-2, log=True)),
        ("trainer.max_epochs=int(interval(5, 20))", IntDistribution(5, 20)),
        ("data.batch_size=tag(log, int(interval(16, 256)))", IntDistribution(16, 256, log=True)),
        ("data.batch_size=range(16, 65, 16)", IntDistribution(16, 64, step=16)),
        ("data.batch_size=range(5, 0, -2)", IntDistribution(1, 5, step=2)),
        ("loss.gamma=range(0.5, 2.0, 0.5)", FloatDistribution(0.5, 1.5, step=0.5)),
        ("model/head=choice(simple, acrnn)", CategoricalDistribution(["simple", "acrnn"])),
        ("seed=1,2,3", CategoricalDistribution([1, 2, 3])),
        ("x=choice(a, 1, 2.5, true)", CategoricalDistribution(["a", 1, 2.5, True])),
    ],
)
def test_each_sweep_syntax_maps_to_its_distribution(entry: str, expected) -> None:
    assert _dist(entry) == expected


def test_fixed_values_pass_through_and_later_entries_win() -> None:
    space = parse_search_space(
        [
            "optimizer.lr=tag(log, interval(1e-5, 1e-2))",
            "data.image_size=64",
            "model.head=choice(simple, acrnn)",
            "optimizer.lr=0.001",  # e.g. the command line fixes a searched key
            "data.image_size=choice(32, 64)",  # ... or searches a fixed one
        ]
    )
    assert space.fixed == {"optimizer.lr": "optimizer.lr=0.001"}
    assert set(space.distributions) == {"model.head", "data.image_size"}
    assert space.categorical() == ["model.head", "data.image_size"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("a=tag(lgo, interval(0, 1))", "unknown tag"),
        ("a=tag(log, choice(1, 2))", "`log` applies to interval"),
        ("a=interval(5, 1)", "a < b"),
        ("a=tag(log, interval(0, 1))", "a > 0"),
        ("a=tag(log, range(1, 9, 2))", "cannot combine a step with a log scale"),
        ("a=choice([1, 2], [3])", "choice values must be"),
        ("a=choice(x, x)", "same value twice"),
        ("a=glob(*)", "a=glob(*)"),
        ("a=interval(0, 1", "cannot parse"),
    ],
)
def test_bad_entries_explain_themselves(entry: str, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        parse_search_space([entry])


@pytest.mark.parametrize(
    "value", [None, True, False, 3, 0.001, 1e-12, "acrnn", "a b", "it's", "x,y", "1e5", "null"]
)
def test_format_value_round_trips_through_hydra(value) -> None:
    parsed = OverridesParser.create().parse_override(f"k={format_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def test_sampled_trial_becomes_overrides_inside_the_space() -> None:
    space = parse_search_space(
        [
            "optimizer.lr=tag(log, interval(1e-5, 1e-2))",
            "data.batch_size=range(16, 65, 16)",
            "model/head=choice(simple, acrnn)",
            "data.image_size=64",
        ]
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        params = space.sample(trial)
        assert 1e-5 <= params["optimizer.lr"] <= 1e-2
        assert params["data.batch_size"] in (16, 32, 48, 64)
        assert params["model/head"] in ("simple", "acrnn")
        overrides = space.overrides(params)
        assert overrides[0] == "data.image_size=64"
        parsed = {
            o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)
        }
        assert parsed["optimizer.lr"] == params["optimizer.lr"]
        assert parsed["model/head"] == params["model/head"]
        study.tell(trial, 0.0)
    assert set(space.describe()) == {"optimizer.lr", "data.batch_size", "model/head"}


def test_cmaes_sampler_option_runs_a_study() -> None:
    """``hydra/sweeper/sampler=cmaes`` needs the ``cmaes`` package at the first proposal."""
    import optuna
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from hydra_plugins.derm_optuna_sweeper.config import CmaEsSamplerConf

    sampler = instantiate(OmegaConf.structured(CmaEsSamplerConf(seed=3)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:  # two parameters: CMA-ES proper, not 1-D fallback
        return (trial.suggest_float("x", -2.0, 2.0) - 1.0) ** 2 + trial.suggest_float("y", 0, 1)

    study.optimize(objective, n_trials=12)
    assert len(study.trials) == 12
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
