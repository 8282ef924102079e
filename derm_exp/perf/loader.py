"""Data-loading throughput: the same images and transform, decoded from JPEG vs from the cache."""

from __future__ import annotations

import math
import time
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from derm_exp.perf.timing import median, sync
from derm_exp.training.data_setup import make_dataset, make_loader


def loader_throughput(
    frame: pd.DataFrame,
    transform: Any,
    data_cfg: DictConfig,
    *,
    cached: bool,
    batch_size: int,
    passes: int,
    device: torch.device,
    pass_images: int = 0,
) -> dict[str, Any]:
    """Images per second over passes of the training data path (``data.num_workers``
    persistent workers, uint8 batches finished on ``device``), after one untimed pass (worker
    start-up, page cache). A pass goes over the images in order, again and again until it has
    at least ``pass_images``, as a training epoch of that size would. Building the cache is
    timed separately (``build_s``).

    ``cpu_ms_per_image`` is the median CPU time of ``passes`` more passes (each over the images
    once) in this process with one torch thread, as in a worker: the work per image, which,
    unlike wall-clock rates, hardly depends on other load.
    """
    start = time.perf_counter()
    dataset, finish = make_dataset(frame, transform, data_cfg, cache=cached)
    build_s = time.perf_counter() - start
    if cached and dataset.images is None:
        raise RuntimeError("the transform cannot be served from the cache (no leading resize)")
    workers = int(data_cfg.num_workers)
    repeats = max(1, math.ceil(pass_images / max(1, len(dataset))))
    loader = make_loader(
        dataset,
        finish,
        device,
        batch_size=batch_size,
        sampler=list(range(len(dataset))) * repeats,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    rates = []
    for i in range(passes + 1):
        start = time.perf_counter()
        n = sum(len(labels) for _, labels in loader)
        sync(device)
        if i:  # pass 0 is the warm-up
            rates.append(n / (time.perf_counter() - start))
    del loader  # stops persistent workers
    in_process = make_loader(dataset, finish, device, batch_size=batch_size, shuffle=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # DataLoader workers run single-threaded
    cpu_ms = []
    try:
        for _ in range(passes):
            cpu = time.process_time()
            n = sum(len(labels) for _, labels in in_process)
            sync(device)
            cpu_ms.append((time.process_time() - cpu) * 1000 / n)
    finally:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "img_s": median(rates),
        "img_s_passes": rates,
        "images": len(dataset),
        "images_per_pass": len(dataset) * repeats,
        "cpu_ms_per_image": median(cpu_ms),
        "cpu_ms_per_image_passes": cpu_ms,
    }
    if cached:
        cache = dataset.images
        out |= {
            "build_s": build_s,
            "cache_bytes": cache.nbytes,
            "cache_bytes_per_image": cache.nbytes / max(1, len(cache)),
            "cache_resize": cache.meta["spec"],
        }
    return out
