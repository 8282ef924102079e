"""Training entrypoint: ``python -m derm_exp.train [group=option] [key=value] [-m ...]``.

Research and education only: not a medical device. Examples::

    python -m derm_exp.train                                   # demo data, EfficientNetV2-B0
    python -m derm_exp.train model.head=acrnn data.root=data/HAM10000 model=efficientnet_v2_s
    python -m derm_exp.train -m seed=1,2,3                     # one MLflow run per job
    python -m derm_exp.train resume=<run id or checkpoint_latest.pt>
"""

from __future__ import annotations

import logging
import sys
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
    from derm_exp.training.trainer import fit

    hc = HydraConfig.get()
    with report_user_errors():
        return fit(cfg, Path(hc.runtime.output_dir), overrides=list(hc.overrides.task))


if __name__ == "__main__":
    run_hydra_main(main, "train")
