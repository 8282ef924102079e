"""hydra-submitit-launcher's launchers, changed where its release (1.2.0, 2022) falls short.

- ``launch()`` there waits for the jobs in order and re-raises the first failure at once, so one
  failed (or ``scancel``-ed, or timed-out) job ends a seed sweep while its siblings still run
  unawaited, and ends an Optuna sweep instead of failing one trial. Here every job is awaited and
  a failure becomes that job's ``JobReturn`` (status FAILED, the job's exception or submitit's
  error with the log paths). The ``derm_optuna`` sweeper records a FAIL trial and goes on; for
  other sweepers (seed sweeps) the launcher ends with one ``error:`` line per failed job and
  exit status 1 once every job is done, where Hydra's basic sweeper would print a traceback.
- Multi-task jobs (``tasks_per_node`` / ``nodes`` > 1) train one model with DDP: each task
  exports torch.distributed's variables before the Hydra job, and only rank 0 writes, tracks
  and reports (:mod:`.ddp`); the job's result is rank 0's.
- Its ``SlurmQueueConf`` lacks ``srun_args`` (hydra #2719): the configs here are plain YAML
  (``conf/hydra/launcher/``), so any ``slurm_*`` parameter of submitit's executor, ``srun_args``
  included, can be set.

Imported by Hydra's plugin scan on every start: submitit itself is imported lazily.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from hydra_plugins.derm_submitit_launcher import ddp

log = logging.getLogger(__name__)


def with_stop_reason(ret: JobReturn, stop: BaseException | None) -> JobReturn:
    """A job that failed after a scancel / time-limit SIGTERM fails with that stop as its error.

    The signal handler raises the stop wherever the job is, and Python can wrap it on the way
    out: raised inside a class body's ``__set_name__`` (an import under way) it surfaces as
    ``RuntimeError("Error calling __set_name__ ...")``, whose ``__cause__`` does not survive
    submitit's pickling, so the sweeper would report that instead of "the job was stopped"."""
    if stop is not None and ret.status == JobStatus.FAILED:
        error = ret._return_value
        if not isinstance(error, type(stop)):
            stop.__cause__ = error if isinstance(error, BaseException) else None
            ret._return_value = stop
    return ret


def collect(
    jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]], first: int
) -> tuple[list[JobReturn], list[str]]:
    """Wait for every job; a failed one becomes a FAILED ``JobReturn`` instead of raising.

    Also returns one line per failed job: number, overrides, last error line, log file.
    """
    returns, failures = [], []
    for idx, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True), start=first):
        try:
            ret = job.results()[0]  # rank 0's result for multi-task jobs
        except Exception as exc:  # submitit's UncompletedJobError / FailedJobError
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=exc)
        returns.append(ret)
        if ret.status != JobStatus.COMPLETED:
            line = (
                f"job #{idx} ({' '.join(filter_overrides(overrides))}; job id "
                f"{getattr(job, 'job_id', '?')}): {_last_line(ret._return_value)}; log: "
                f"{job.paths.stderr}"
            )
            log.error(line)
            failures.append(line)
    return returns, failures


def _last_line(error: Any) -> str:
    """The informative end of a job's error: its last non-empty line (for submitit's errors,
    the job's own ``error: ...`` line or the exception that ended it)."""
    lines = [
        ln.strip() for ln in str(error).splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}
    ]
    if not lines:
        return type(error).__name__
    if "You can check full logs" in lines[-1] or lines[-1].startswith("- /"):
        lines = [ln for ln in lines if not ln.startswith(("- /", "You can check", "or at paths"))]
    return lines[-1] if lines else type(error).__name__


class _Tolerant:
    """Mixin: the parent launcher's ``launch()`` (same executor set-up, parameter names and sweep
    folder), but the results are :func:`collect`-ed. Written out because the parent's waits
    inside the same method."""

    _EXECUTOR: str
    params: dict[str, Any]
    config: Any

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[Any, Any],
    ) -> JobReturn:
        """One task of a job (on the node). In a multi-task job, the torch.distributed
        variables are exported first and the non-zero ranks run without Hydra outputs and
        callbacks (:mod:`.ddp`): one DDP training, rank 0's folder and tracking."""
        if ddp.n_tasks(self.params) > 1:
            if ddp.export_rank() != 0:
                self.hydra_context = ddp.other_rank_context(self.hydra_context)
                sweep_overrides = [*sweep_overrides, *ddp.OTHER_RANK_OVERRIDES]
        else:  # one task: stop at scancel (DDP tasks get train.py's torchrun handlers)
            from derm_exp.training import distributed

            distributed.install_signal_handlers(scheduler_job=True)
            ret = super().__call__(  # type: ignore[misc]
                sweep_overrides, job_dir_key, job_num, job_id, singleton_state
            )
            return with_stop_reason(ret, distributed.requested_stop())
        return super().__call__(  # type: ignore[misc]
            sweep_overrides, job_dir_key, job_num, job_id, singleton_state
        )

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        assert self.config is not None and len(job_overrides) > 0
        _refuse_multi_task(self.params, self._EXECUTOR)
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{
                f"{self._EXECUTOR}_max_num_timeout": v
                for k, v in self.params.items()
                if k == "max_num_timeout"
            },
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        returns, failures = collect(jobs, job_overrides, initial_job_idx)
        if failures and not _sweeper_records_failures(self.config):
            # Hydra's basic sweeper would re-raise the first failure as a traceback
            print(
                f"error: {len(failures)} of {len(returns)} jobs failed (the others finished):\n  "
                + "\n  ".join(failures),
                file=sys.stderr,
            )
            sys.exit(1)
        return returns


def _refuse_multi_task(params: dict[str, Any], executor: str) -> None:
    """Multi-task settings that cannot run (see :func:`.ddp.refusal`): one ``error:`` line."""
    reason = ddp.refusal(params, executor)
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        sys.exit(2)


def _sweeper_records_failures(config: Any) -> bool:
    """The ``derm_optuna`` sweeper turns a failed job into a FAIL trial and goes on."""
    return "derm_optuna_sweeper" in str(config.hydra.sweeper.get("_target_", ""))


class DermSlurmLauncher(_Tolerant, SlurmLauncher):
    """``hydra/launcher=submitit_slurm``: one SLURM job (array task) per Hydra job."""


class DermLocalLauncher(_Tolerant, LocalLauncher):
    """``hydra/launcher=submitit_local``: the same, as local processes (no SLURM needed)."""
