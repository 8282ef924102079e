"""Training entrypoint: ``python -m derm_exp.train [group=option] [key=value] [-m ...]``.

Research and education only: not a medical device. Examples::

    python -m derm_exp.train                                   # demo data, EfficientNetV2-B0
    python -m derm_exp.train model.head=acrnn data.root=data/HAM10000 model=efficientnet_v2_s
    python -m derm_exp.train -m seed=1,2,3                     # one MLflow run per job
    python -m derm_exp.train resume=<run id or checkpoint_latest.pt>
    torchrun --nproc_per_node=2 -m derm_exp.train experiment=demo   # DDP, one model
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from derm_exp.config import run_hydra_main

log = logging.getLogger("derm_exp.train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train one configuration; return the validation objective for sweepers."""
    from derm_exp.data.metadata import DataValidationError, check_data_root
    from derm_exp.errors import report_user_errors  # heavy imports happen after --help
    from derm_exp.training.validate import ConfigError, validate_config

    # Bad values and a wrong data.root fail in a second, before torch and timm load.
    try:
        if cfg.resume is None:
            validate_config(cfg)
        check_data_root(cfg.data.root, cfg.data.metadata_file)
    except (ConfigError, DataValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    from derm_exp.runtime import resolve_device
    from derm_exp.training import distributed
    from derm_exp.training.trainer import fit

    hc = HydraConfig.get()
    output_dir = hc.runtime.output_dir
    with report_user_errors(), _quiet_on_other_ranks():
        if distributed.env_world_size() > 1:
            distributed.install_signal_handlers()  # SIGTERM / Ctrl-C: cleanup once, no traceback
            timeout = cfg.trainer.get("ddp_timeout_s") or 1800
            distributed.init(resolve_device(cfg.device), timeout)
            output_dir = distributed.broadcast(output_dir)  # rank 0's folder for every rank
        try:
            return fit(cfg, Path(output_dir), overrides=list(hc.overrides.task))
        finally:
            distributed.teardown()


@contextlib.contextmanager
def _quiet_on_other_ranks() -> Iterator[None]:
    """Non-zero DDP ranks stop silently on Ctrl-C and on a peer failure: rank 0 prints the one
    message (and torchrun its summary of which rank failed)."""
    from derm_exp.training.distributed import PeerFailure, env_rank

    try:
        yield
    except (KeyboardInterrupt, PeerFailure) as exc:
        if env_rank() == 0:
            raise
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 1)


# Hydra settings of the non-zero DDP ranks: they write nothing, so they must not create a
# ${now:} folder of their own nor race rank 0's .hydra/ dump and train.log (hydra #2070);
# they log to the console, warnings only. Their output folder is rank 0's (broadcast in main).
_OTHER_RANKS = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout")


def ddp_rank_overrides(argv: list[str], rank: int, world_size: int) -> list[str]:
    """``argv`` for this torchrun rank: unchanged on rank 0 (and without torchrun)."""
    if world_size <= 1 or rank == 0:
        return argv
    keys = tuple(o.split("=", 1)[0] + "=" for o in _OTHER_RANKS)
    return [a for a in argv if not a.startswith(keys)] + list(_OTHER_RANKS)


if __name__ == "__main__":
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1 and any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        print(
            "error: torchrun trains one model with DDP; run sweeps (-m) without torchrun",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.argv[1:] = ddp_rank_overrides(sys.argv[1:], rank, world)
    if world > 1 and rank != 0:
        logging.getLogger("derm_exp").setLevel(logging.WARNING)
    run_hydra_main(main, "train")
