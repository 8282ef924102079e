"""Epoch-end hooks: how sweepers watch a run (e.g. Optuna pruning) without the trainer knowing.

A hook receives the 1-based epoch and that epoch's logged metrics. Raising
:class:`TrialPruned` from a hook ends the run early as pruned (MLflow status KILLED,
tag ``derm_exp.pruned=true``) and propagates to the caller.
"""

from __future__ import annotations

from collections.abc import Callable

EpochHook = Callable[[int, dict[str, float]], None]
EPOCH_END_HOOKS: list[EpochHook] = []


class TrialPruned(Exception):  # noqa: N818 - mirrors optuna.TrialPruned
    """A hook decided that this run should stop early."""


def run_epoch_end_hooks(epoch: int, metrics: dict[str, float]) -> None:
    """Call every hook, unless a SIGTERM stopped the job: a cancelled trial reports nothing."""
    from derm_exp.training.distributed import raise_if_stopped  # torch only when training

    raise_if_stopped()
    for hook in list(EPOCH_END_HOOKS):
        hook(epoch, metrics)
