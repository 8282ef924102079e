"""Multi-task jobs (``tasks_per_node`` / ``nodes`` > 1): one DDP training per job.

SLURM starts every task of a job (``srun``, one per GPU); in each, before the Hydra job runs,
submitit's :class:`~submitit.helpers.TorchDistributedEnvironment` exports ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` from SLURM's variables, the
ones torchrun would set, so :mod:`derm_exp.training.distributed` joins the process group as
under torchrun. As there, rank 0 alone writes the job's folder (``.hydra/``, ``train.log``,
checkpoints), tracks to MLflow and reports to the Optuna trial: the other tasks run the job in
the same folder without Hydra's config dump and log file (they log warnings to their own
submitit log) and without the app's Hydra callbacks (no job-side pruning hook, no tracking set-up).
The launcher takes rank 0's result as the job's (``job.results()[0]``).

Everything but :func:`refusal` runs on the compute node.
"""

from __future__ import annotations

import logging
from typing import Any

# What the non-zero ranks change in their job config (as derm_exp.train does under torchrun):
# no .hydra/ dump and no train.log racing rank 0's, console logging only.
OTHER_RANK_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=stdout")


def n_tasks(params: dict[str, Any]) -> int:
    """Tasks per job: ``tasks_per_node`` x ``nodes``."""
    return int(params.get("tasks_per_node") or 1) * int(params.get("nodes") or 1)


def refusal(params: dict[str, Any], executor: str) -> str | None:
    """Why these multi-task settings cannot run (None when they can, or for one task)."""
    tasks, nodes = int(params.get("tasks_per_node") or 1), int(params.get("nodes") or 1)
    if tasks * nodes == 1:
        return None
    given = f"hydra.launcher.tasks_per_node={tasks} nodes={nodes}"
    if executor != "slurm":
        return (
            f"{given}: multi-task (DDP) jobs run through hydra/launcher=submitit_slurm only; "
            "locally, use torchrun --nproc_per_node=N -m derm_exp.train (no -m sweep)"
        )
    if params.get("gpus_per_task"):
        return (
            f"{given} with gpus_per_task: each task would see only its own GPU while "
            f"training picks cuda:<LOCAL_RANK>; set gpus_per_node={tasks} and gpus_per_task=null"
        )
    gpus = params.get("gpus_per_node")
    if isinstance(gpus, int) and gpus not in (0, tasks):
        return (
            f"{given} with gpus_per_node={gpus}: DDP runs one task per GPU; "
            f"set gpus_per_node={tasks} (or null on CPU nodes)"
        )
    return None


def export_rank() -> int:
    """In a task of a multi-task job: export torch.distributed's variables; return the rank.

    ``CUDA_VISIBLE_DEVICES`` is left as SLURM set it (every GPU of the node): training picks
    ``cuda:<LOCAL_RANK>`` itself.
    """
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
    if env.rank != 0:
        logging.getLogger("derm_exp").setLevel(logging.WARNING)
    return int(env.rank)


def other_rank_context(context: Any) -> Any:
    """``context`` without the app's Hydra callbacks, for the non-zero ranks."""
    from hydra._internal.callbacks import Callbacks
    from hydra.types import HydraContext

    return HydraContext(config_loader=context.config_loader, callbacks=Callbacks())
