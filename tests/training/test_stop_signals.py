"""SIGTERM in a batch job stops training even when Python swallows the handler's own raise.

A signal handler runs wherever the main thread is, and an exception raised while it runs a
finalizer (a weakref callback, ``__del__``) is only printed ("Exception ignored in ..."): that
is how a cancelled SLURM trial once kept training, reported its epoch and was pruned. The stop
is remembered and raised again at the next batch and before the epoch-end hooks.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Iterator

import pytest

from derm_exp.training import distributed
from derm_exp.training.hooks import EPOCH_END_HOOKS, run_epoch_end_hooks


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    distributed._STOPPED.clear()
    distributed._DEFERRED.clear()


class _SignalledInFinalizer:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs inside this finalizer


def test_a_sigterm_swallowed_by_a_finalizer_still_stops_the_next_batch(
    handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    distributed.install_signal_handlers(scheduler_job=True)
    distributed.raise_if_stopped()  # nothing asked yet
    _SignalledInFinalizer()
    gc.collect()
    assert dropped == [distributed.JobStopped]  # the handler's own raise went nowhere
    with pytest.raises(distributed.JobStopped, match="job was stopped"):
        distributed.raise_if_stopped()
    reports: list[int] = []
    EPOCH_END_HOOKS.append(lambda epoch, metrics: reports.append(epoch))
    try:
        with pytest.raises(distributed.JobStopped):
            run_epoch_end_hooks(1, {"val/balanced_accuracy": 0.5})
    finally:
        EPOCH_END_HOOKS.pop()
    assert reports == []  # a cancelled trial reports nothing
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # a second SIGTERM: no re-entry


def test_without_a_job_scheduler_the_ddp_stop_is_a_peer_failure(handlers: None) -> None:
    distributed.install_signal_handlers()
    with pytest.raises(distributed.PeerFailure, match="stopped by the launcher"):
        os.kill(os.getpid(), signal.SIGTERM)
        _spin()


def _spin() -> None:
    for _ in range(1000):  # the handler runs between two bytecodes of the main thread
        pass


def test_a_sigterm_during_a_deferred_cleanup_is_recorded_not_raised(handlers: None) -> None:
    """torchrun SIGTERMs a survivor just after its collective failed: marking the MLflow run
    FAILED must finish (it once left the run RUNNING)."""
    distributed.install_signal_handlers()
    with distributed.stops_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        _spin()
        finished = True
    assert finished
    with pytest.raises(distributed.PeerFailure, match="stopped by the launcher"):
        distributed.raise_if_stopped()  # remembered for the next batch


def test_after_a_peer_failure_every_later_stop_is_deferred(handlers: None) -> None:
    distributed.install_signal_handlers()
    distributed.defer_stops()
    os.kill(os.getpid(), signal.SIGINT)
    _spin()
    with pytest.raises(KeyboardInterrupt):
        distributed.raise_if_stopped()
