"""Benchmark entrypoint: ``python -m derm_exp.benchmark [group=option] [key=value]``.

Measures on this machine, with the project's own code paths: DataLoader throughput decoding JPEGs
vs reading the decoded-image cache (same images, same transform, configured workers); the
training step (forward / backward / optimizer / EMA) and the trainer's epoch loop fed by
synthetic tensors vs the real loader; inference latency (single, batch, TTA views batched vs
serial, the end-to-end predictor and an ensemble); peak memory; an estimated HAM10000 epoch.
Every figure is a median over repeats after untimed warm-up. Examples::

    python -m derm_exp.benchmark data.root=data/HAM10000
    python -m derm_exp.benchmark model=tiny data.image_size=32 benchmark.batches=2
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main

log = logging.getLogger("derm_exp.benchmark")


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    """Run the configured benchmark sections; write ``benchmark.json`` and print a table."""
    from derm_exp.errors import report_user_errors  # heavy imports happen after --help

    with report_user_errors():
        from derm_exp.perf.settings import check_benchmark_config

        check_benchmark_config(cfg)
        from derm_exp.perf.run import run_benchmark

        run_benchmark(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    run_hydra_main(main, "benchmark")
