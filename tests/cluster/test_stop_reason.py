"""A job stopped by scancel fails with "the job was stopped", even where Python wrapped the stop
on its way out (hydra_plugins/derm_submitit_launcher/launcher.py: ``with_stop_reason``)."""

from __future__ import annotations

import pickle

from hydra.core.utils import JobReturn, JobStatus

from derm_exp.training.distributed import _JOB_STOP, JobStopped
from hydra_plugins.derm_submitit_launcher.launcher import with_stop_reason


def _failed(error: BaseException) -> JobReturn:
    ret = JobReturn(overrides=["seed=1"], status=JobStatus.FAILED)
    ret._return_value = error
    return ret


def test_a_wrapped_stop_is_reported_as_the_stop() -> None:
    # What a SIGTERM during an import's class body gave on a SLURM node: the stop wrapped.
    wrapped = RuntimeError("Error calling __set_name__ on 'Field' instance 'types' in 'MetricInfo'")
    ret = with_stop_reason(_failed(wrapped), JobStopped(_JOB_STOP))
    assert isinstance(ret._return_value, JobStopped)
    assert "the job was stopped (SIGTERM" in str(ret._return_value)
    assert ret._return_value.__cause__ is wrapped
    # and it still travels back to the sweeper the way submitit sends results
    assert "the job was stopped" in str(pickle.loads(pickle.dumps(ret))._return_value)


def test_other_results_are_left_alone() -> None:
    stop = JobStopped(_JOB_STOP)
    own = JobStopped(_JOB_STOP)
    assert with_stop_reason(_failed(own), stop)._return_value is own
    error = ValueError("optimizer.lr=-1 must be > 0")
    assert with_stop_reason(_failed(error), None)._return_value is error
    done = JobReturn(overrides=[], status=JobStatus.COMPLETED)
    done._return_value = 0.5
    assert with_stop_reason(done, stop)._return_value == 0.5
