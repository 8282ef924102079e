"""Multi-process (DDP) plumbing for ``torchrun --nproc_per_node=N -m derm_exp.train``.

torch.distributed does the work (``gloo`` on CPU, ``nccl`` on CUDA); this module only names
what the trainer needs: init/teardown from torchrun's environment, rank and world size,
:func:`is_main`, a rank-0 decision broadcast to every rank, rank-0-first sections, and exact
gathering of sharded evaluation outputs. With ``WORLD_SIZE`` unset or 1 nothing is initialised
and every helper is a no-op, so single-process training is unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from derm_exp.errors import UserError

log = logging.getLogger(__name__)


class PeerFailure(UserError, RuntimeError):
    """Another process of the DDP run died or stopped answering, or the launcher stopped this one.

    torchrun itself notices a dead worker and SIGTERMs the others (SIGKILL 30 s later); a peer
    that hangs instead makes the others' collectives fail after ``trainer.ddp_timeout_s``. What
    is ours: turning both into this one exception, so rank 0 marks the MLflow run FAILED and
    prints one ``error:`` line (where the last good checkpoint is), and no rank prints a traceback.
    """


# gloo raises a plain RuntimeError whose message starts with its source path when a peer's
# connection drops or a collective times out ("[.../gloo/transport/tcp/pair.cc:545] Read error
# ... Connection reset by peer"); NCCL failures are DistBackendError, a DistError.
_PEER_SIGNS = ("gloo/", "nccl")


def as_peer_failure(exc: BaseException) -> PeerFailure | None:
    """``exc`` as a :class:`PeerFailure` when it is a failed collective under DDP, else None."""
    if isinstance(exc, PeerFailure):
        return exc
    if not is_distributed() or not isinstance(exc, RuntimeError):
        return None
    text = str(exc).lower()
    if isinstance(exc, dist.DistError) or any(s in text for s in _PEER_SIGNS):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PeerFailure(f"another DDP process failed or stopped answering ({first[:200]})")
    return None


class JobStopped(UserError, RuntimeError):
    """A batch scheduler stopped this job (SIGTERM: ``scancel``, its time limit, preemption)."""


_PEER_STOP = "stopped by the launcher (SIGTERM): another DDP process failed or the job was stopped"
_JOB_STOP = "the job was stopped (SIGTERM: scancel, its time limit or preemption)"
# The stop a signal asked for. The handler raises it at once, but Python drops an exception
# raised while the main thread runs a finalizer (a weakref callback, ``__del__``: "Exception
# ignored in ..."), so the training loop asks again with raise_if_stopped() at every batch and
# before the epoch-end hooks (a pruning report after a cancel).
_STOPPED: list[Callable[[], BaseException]] = []
_DEFERRED: list[bool] = []  # after defer_stops() / inside stops_deferred(): record, no raise


def install_signal_handlers(scheduler_job: bool = False) -> None:
    """SIGTERM raises :class:`PeerFailure` (under torchrun: torchrun's "a peer died, stop" or a
    job scheduler's cancel), and Ctrl-C raises KeyboardInterrupt, each once: torchrun forwards
    the signal a second time while the first is being handled (marking the run, logging the
    checkpoint), which must not interrupt that cleanup.

    In a single-task submitit job (``scheduler_job``) SIGTERM raises :class:`JobStopped`:
    submitit itself only logs SIGTERM ("bypassing"), so a cancelled job would go on training
    until SLURM's SIGKILL ``KillWait`` seconds later, and a trial could still report and be
    pruned after its cancel.
    """

    def handle(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if signum == signal.SIGINT:
            _STOPPED[:] = [KeyboardInterrupt]
        else:
            kind, message = (JobStopped, _JOB_STOP) if scheduler_job else (PeerFailure, _PEER_STOP)
            _STOPPED[:] = [functools.partial(kind, message)]
        if not _DEFERRED:
            raise_if_stopped()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def defer_stops() -> None:
    """From now on a SIGTERM or Ctrl-C is recorded (for :func:`raise_if_stopped`), not raised:
    a DDP process whose peer died is already stopping, and the launcher's SIGTERM that follows
    must not cut its cleanup short (raised inside ``mlflow.end_run`` it once left the run
    RUNNING instead of FAILED)."""
    _DEFERRED[:] = [True]


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """:func:`defer_stops` for the block only (a cleanup that must finish)."""
    before = list(_DEFERRED)
    _DEFERRED[:] = [True]
    try:
        yield
    finally:
        _DEFERRED[:] = before


def raise_if_stopped() -> None:
    """Raise the stop a SIGTERM or Ctrl-C asked for (see :func:`install_signal_handlers`)."""
    if _STOPPED:
        raise _STOPPED[0]()


def requested_stop() -> BaseException | None:
    """The exception of the stop a SIGTERM or Ctrl-C asked for, or None when none came."""
    return _STOPPED[0]() if _STOPPED else None


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """``RANK`` as torchrun sets it (0 when absent)."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """True once a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def train_command() -> str:
    """How the user starts this same training again: torchrun with this world size, or python."""
    n = world_size() if is_distributed() else env_world_size()
    return (
        f"torchrun --nproc_per_node={n} -m derm_exp.train" if n > 1 else "python -m derm_exp.train"
    )


def is_main() -> bool:
    """Rank 0 (or the only process): the one that tracks, logs and writes outputs."""
    return rank() == 0


def init(device: torch.device, timeout_s: float) -> torch.device:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; return the device to train on
    (``cuda:<LOCAL_RANK>`` on CUDA). A rank that waits longer than ``timeout_s`` in a
    collective (a peer died) fails instead of hanging."""
    if env_world_size() <= 1 or is_distributed():
        return device
    backend = "gloo"
    if device.type == "cuda":
        backend = "nccl"
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        timeout=datetime.timedelta(seconds=float(timeout_s)),
        device_id=device if device.type == "cuda" else None,
    )
    log.info("DDP: rank %d of %d (%s, %s)", rank(), world_size(), backend, device)
    return device


def local_device(device: torch.device) -> torch.device:
    """This rank's CUDA device (``cuda:<LOCAL_RANK>``) under DDP; ``device`` otherwise."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def teardown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (picklable objects; no-op alone)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_saved(obj: Any, src: int = 0) -> Any:
    """:func:`broadcast` for objects holding tensors (a loaded checkpoint, memory-mapped or not):
    sent in ``torch.save`` form, which pickles tensor storages that plain pickling cannot."""
    if not is_distributed():
        return obj
    data = None
    if rank() == src:
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
    data = broadcast(data, src)
    return torch.load(io.BytesIO(data), weights_only=True)  # tensors and containers only


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: for work that creates shared files
    (the generated demo dataset, the decoded-image cache), so ranks never race to create them."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (a NaN loss on one rank stops all of them)."""
    if not is_distributed():
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) == 0


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over ranks (equal-sized shards: the global mean)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def gather_shards(*arrays: np.ndarray, axis: int = 0) -> tuple[np.ndarray, ...]:
    """Concatenate every rank's arrays in rank order: with contiguous, unpadded shards
    (:class:`derm_exp.data.sampling.ShardSampler`) that is the single-process order."""
    if not is_distributed():
        return arrays
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, arrays)
    return tuple(np.concatenate([p[i] for p in parts], axis=axis) for i in range(len(arrays)))


def sync_from_main(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank.

    DDP keeps parameters equal, but BatchNorm running statistics (and EMA copies of them) drift
    per rank; validation shards must all score rank 0's weights, the ones that are saved.
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if torch.is_tensor(tensor):
                dist.broadcast(tensor, src=0)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when distributed (itself otherwise). Built over the
    parameters that currently require gradients: rewrap when a training stage (un)freezes."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile (``_orig_mod``) and DDP (``module``) wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
