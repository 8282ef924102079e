"""The end-of-run report: the threshold is fitted on validation arrays only, stored, logged with
what it reaches on test; AURC and selective balanced accuracy logged; config errors clear."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict

from derm_exp.data.splits import load_split_csv
from derm_exp.errors import ConfigError
from derm_exp.models.checkpoint import load_checkpoint
from derm_exp.training import abstention_fit
from derm_exp.training.trainer import fit
from derm_exp.training.validate import validate_config

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def test_fit_receives_validation_arrays_only(
    tiny_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    real = abstention_fit.fit_abstention

    def spy(settings, *arrays):
        seen.append((settings, *arrays))
        return real(settings, *arrays)

    monkeypatch.setattr(abstention_fit, "fit_abstention", spy)
    with open_dict(tiny_cfg):
        tiny_cfg.trainer.max_epochs = 1
        tiny_cfg.evaluation.n_boot = 0
        tiny_cfg.registry.enabled = False
        tiny_cfg.abstain.coverage = 0.8
    fit(tiny_cfg, tmp_path / "run")
    (settings, val_probs, val_labels), = seen  # fmt: skip
    val = load_split_csv(tmp_path / "run" / "splits" / "val.csv")
    test = load_split_csv(tmp_path / "run" / "splits" / "test.csv")
    # exactly the validation split, in order: the fit has no way to see test labels
    assert val_labels.tolist() == [CLASSES.index(c) for c in val["dx"]]
    assert len(val_probs) == len(val) and set(val.image_id).isdisjoint(test.image_id)
    assert settings["coverage"] == 0.8
    ck = load_checkpoint(tmp_path / "run" / "checkpoint_best.pt")
    assert ck["abstention"]["target"] == {"coverage": 0.8}
    assert ck["abstention"]["val"]["coverage"] >= 0.8

    mlflow.set_tracking_uri(tiny_cfg.tracking.uri)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("derm_exp").experiment_id])
    m = run.data.metrics
    assert m["abstain/threshold"] == pytest.approx(ck["abstention"]["threshold"])
    for key in ("test/aurc", "test/eaurc", "test/selective_balanced_accuracy_cov90",
                "test/selective_balanced_accuracy_cov80", "test/abstain_coverage"):  # fmt: skip
        assert np.isfinite(m[key]), key
    assert run.data.params["abstain.coverage"] == "0.8"
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "risk_coverage.png" in plots


def test_config_errors(tiny_cfg: DictConfig) -> None:
    with open_dict(tiny_cfg):
        tiny_cfg.abstain.risk = 0.2
    with pytest.raises(ConfigError, match=r"give one target.*abstain.coverage=null"):
        validate_config(tiny_cfg)
    with open_dict(tiny_cfg):
        tiny_cfg.abstain.coverage = None
        tiny_cfg.abstain.risk = 1.5
        tiny_cfg.abstain.quality.min_side = -3
        tiny_cfg.evaluation.selective_coverages = [0.9, 0]
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_cfg)
    for part in ("abstain.risk=1.5", "abstain.quality.min_side=-3", "selective_coverages"):
        assert part in str(err.value)
    with open_dict(tiny_cfg):
        del tiny_cfg["abstain"]  # a run configured before the key existed
        del tiny_cfg.evaluation["selective_coverages"]
    validate_config(tiny_cfg)
    assert abstention_fit.abstain_settings(tiny_cfg)["coverage"] == 0.9
