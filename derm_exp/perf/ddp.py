"""The ``ddp`` benchmark section: the trainer's epoch loop on synthetic batches in 1 process and
in N DDP processes (gloo on CPU, NCCL on CUDA, one GPU per process), measured in one run.

Each measurement runs in fresh processes started by ``torch.multiprocessing`` (spawn), the
same way for 1 and for N, with the trainer's own parts (:func:`~derm_exp.training.trainer.
build_parts`, which wraps the module in DistributedDataParallel when a process group of more
than one rank exists). The global rate is every rank's images over the slowest rank's time.
Threads: ``benchmark.threads``, else the cores split evenly over the processes (torchrun sets
``OMP_NUM_THREADS=1`` for N > 1 itself), so 1 and N processes use the same cores.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from derm_exp.errors import ConfigError


def ddp_section(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Global training-loop img/s with 1 and with ``benchmark.ddp_processes`` processes."""
    n = int(cfg.benchmark.get("ddp_processes") or 2)
    if device.type == "cuda" and torch.cuda.device_count() < n:
        raise ConfigError(
            f"benchmark.ddp_processes={n} needs {n} GPUs (one per process); this machine has "
            f"{torch.cuda.device_count()}: lower it or use device=cpu (gloo)"
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    runs = {world: _measure(config, world, device.type) for world in (1, n)}
    single, multi = runs[1], runs[n]
    return {
        "processes": n,
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "per_process_batch": int(cfg.data.batch_size),
        "threads_per_process": {str(w): r["threads"] for w, r in runs.items()},
        "single_img_s": single["img_s"],
        "multi_img_s": multi["img_s"],
        "multi_over_single": multi["img_s"] / single["img_s"],
        "note": (
            f"the trainer's loop on synthetic batches of data.batch_size per process; N={n} "
            "processes' global rate (all ranks' images / the slowest rank's time) vs 1 process"
        ),
    }


def _measure(config: dict, world: int, device_type: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        mp.spawn(_worker, args=(world, config, device_type, tmp), nprocs=world, join=True)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    images = sum(r["images"] for r in ranks)
    return {
        "img_s": images / max(r["seconds"] for r in ranks),
        "threads": ranks[0]["threads"],
    }


def _worker(rank: int, world: int, config: dict, device_type: str, tmp: str) -> None:
    """One process of the measurement: join the group (when N > 1), time the loop, write the
    figures to ``tmp/rank<r>.json``."""
    from derm_exp.data.metadata import CLASSES
    from derm_exp.models.classifier import build_model
    from derm_exp.perf.training import TimedTraining, loop_throughput, repeat_batch
    from derm_exp.perf.training import synthetic_batch as make_batch
    from derm_exp.runtime import resolve_precision, seed_everything
    from derm_exp.training.stages import ALL_LAYERS, make_optimizer
    from derm_exp.training.trainer import build_parts

    cfg = OmegaConf.create(config)
    b = cfg.benchmark
    threads = int(b.get("threads") or max(1, (os.cpu_count() or 1) // world))
    torch.set_num_threads(threads)
    seed_everything(int(cfg.seed))
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if world > 1:
        dist.init_process_group(
            "nccl" if device_type == "cuda" else "gloo",
            init_method=f"file://{tmp}/rendezvous",
            rank=rank,
            world_size=world,
            device_id=device if device_type == "cuda" else None,
        )
    try:
        precision = resolve_precision(cfg.trainer.amp, device)
        model = build_model(cfg.model, num_classes=len(CLASSES), image_size=cfg.data.image_size)
        size = int(model.data_config["input_size"][-1])
        labels = np.arange(len(CLASSES))  # balanced: class weights (if any) are all 1
        parts = build_parts(cfg, model, labels, device, precision)
        optimizer, scheduler = make_optimizer(cfg, model, ALL_LAYERS, int(b.batches))
        timed = TimedTraining(parts, optimizer, scheduler, ALL_LAYERS)
        batch = make_batch(int(cfg.data.batch_size), size)
        out = loop_throughput(timed, repeat_batch(batch), int(b.warmup), int(b.batches))
        images = int(cfg.data.batch_size) * int(b.batches)
        figures = {"images": images, "seconds": out["seconds"], "threads": threads}
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(figures))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
