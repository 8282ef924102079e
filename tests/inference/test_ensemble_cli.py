"""A 2-seed sweep (Hydra multirun, basic launcher) -> registered versions sharing a group ->
``python -m derm_exp.ensemble group=...`` evaluates them and logs a run listing its members."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from derm_exp.config import PROJECT_ROOT
from derm_exp.ensemble import KIND
from derm_exp.errors import RegistryError
from tests.conftest import compose_train
from tests.tiny import TINY

pytestmark = pytest.mark.slow
ENV = {
    **os.environ,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HYDRA_FULL_ERROR": "0",
}


@dataclass(frozen=True)
class Sweep:
    root: Path
    uri: str
    group: str

    def store(self) -> list[str]:
        return [f"tracking.uri={self.uri}", f"tracking.artifact_root={self.root / 'mlruns'}"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=PROJECT_ROOT,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> Sweep:
    root = tmp_path_factory.mktemp("seed_sweep")
    done = Sweep(root, f"sqlite:///{root}/mlflow.db", f"{root.name}/sweep")
    proc = _run(
        [
            "derm_exp.train",
            "-m",
            "experiment=ensemble_seeds",
            *TINY,
            "seed=1,2",
            f"data.root={demo_data}",
            "trainer.max_epochs=1",
            "evaluation.n_boot=0",
            "device=cpu",
            "registry.allow_degenerate=true",  # 1 epoch at 32 px predicts one class
            *done.store(),
            f"hydra.sweep.dir={root / 'sweep'}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(done.uri)
    return done


def _runs(sweep: Sweep, query: str) -> list:
    mlflow.set_tracking_uri(sweep.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("derm_exp")
    return client.search_runs([exp.experiment_id], query)


def test_seed_sweep_runs_share_a_group(sweep: Sweep) -> None:
    from derm_exp.tracking.model_lookup import resolve_version
    from derm_exp.tracking.registry_search import search_versions

    runs = _runs(sweep, f"tags.group = '{sweep.group}'")
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
    assert sorted(r.info.run_name for r in runs) == ["seed-1", "seed-2"]
    versions = search_versions(group=sweep.group)
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs)
    assert resolve_version("models:/derm-classifier@seed-2").tags["seed"] == "2"


def test_ensemble_cli_evaluates_logs_and_registers(sweep: Sweep, demo_data: Path) -> None:
    from derm_exp.data.splits import load_split_csv
    from derm_exp.evaluation.metrics import classification_metrics
    from derm_exp.inference.ensemble import EnsemblePredictor

    proc = _run(
        [
            "derm_exp.ensemble",
            f"group={sweep.group}",
            *sweep.store(),
            "n_boot=20",
            "register=true",
            "device=cpu",
            f"hydra.run.dir={sweep.root / 'ensemble'}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Registered through the client, like the training runs: none of MLflow's fluent notices.
    assert "registered models:/derm-ensemble/1" in proc.stdout
    for notice in ("Successfully registered", "already exists", "Created version"):
        assert notice not in proc.stdout + proc.stderr
    for text in (
        "derm-classifier/1",
        "derm-classifier/2",
        "ENSEMBLE (mean, 2)",
        "balanced_accuracy",
        "not a medical device",
    ):
        assert text in proc.stdout

    (run,) = _runs(sweep, "tags.`derm_exp.kind` = 'ensemble_evaluation'")
    members = _runs(sweep, f"tags.group = '{sweep.group}'")
    member_runs = {r.info.run_id for r in members if r.data.tags.get("derm_exp.kind") != KIND}
    assert set(run.data.tags["derm_exp.member_runs"].split(",")) == member_runs
    assert run.data.tags["group"] == sweep.group
    assert {run.data.params["member_0"], run.data.params["member_1"]} == {
        "derm-classifier/1",
        "derm-classifier/2",
    }
    listed = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="members.json"
            )
        ).read_text()
    )["members"]
    assert {m["run_id"] for m in listed} == member_runs
    assert {
        "member_0/test_balanced_accuracy",
        "member_1/test_balanced_accuracy",
        "test/balanced_accuracy",
        "test/mean_mutual_information",
    } <= set(run.data.metrics)

    # The logged metric is the ensemble's on the members' own test split.
    ens = EnsemblePredictor.from_registry(group=sweep.group, device="cpu")
    split = load_split_csv(
        mlflow.artifacts.download_artifacts(
            run_id=listed[0]["run_id"], artifact_path="splits/test.csv"
        )
    )
    probs = ens.predict_proba(split["path"].tolist())
    expected = classification_metrics(split["label"].to_numpy(), probs, ens.classes)
    assert run.data.metrics["test/balanced_accuracy"] == pytest.approx(
        expected["balanced_accuracy"]
    )

    # The registered ensemble loads with pyfunc and gives the same probabilities.
    model = mlflow.pyfunc.load_model("models:/derm-ensemble/1")
    images = split["path"].tolist()[:3]
    out = model.predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(out[ens.classes].to_numpy(), probs[:3], atol=1e-6)
    assert {"std", "entropy", "mutual_information", "disagreement"} <= set(out.columns)


def test_ensemble_refuses_members_from_another_split(sweep: Sweep, tmp_path: Path) -> None:
    import torch

    from derm_exp.ensemble import run_ensemble
    from derm_exp.models.checkpoint import save_checkpoint

    run = _runs(sweep, "tags.seed = '1'")[0]
    ck_path = Path(run.data.tags["derm_exp.checkpoint_dir"]) / "checkpoint_best.pt"
    ck = torch.load(ck_path, weights_only=True)
    other = save_checkpoint({**ck, "data_fingerprint": "0123456789abcdef"}, tmp_path / "o.pt")
    cfg = compose_train(["models=[models:/derm-classifier/2]", "device=cpu"], "ensemble")
    with open_dict(cfg):
        cfg.models.append(str(other))
        cfg.tracking.uri, cfg.tracking.artifact_root = sweep.uri, str(sweep.root / "mlruns")
    with pytest.raises(
        RegistryError,
        match=r"different data splits.*derm-classifier/2 = \w+; "
        r".*o\.pt = 0123456789abcdef",
    ):
        run_ensemble(cfg, tmp_path / "out")


def test_an_empty_query_is_a_user_error(
    sweep: Sweep, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from derm_exp.ensemble import run_ensemble
    from derm_exp.errors import report_user_errors

    cfg = compose_train(["group=no-such-sweep", *sweep.store()], "ensemble")
    with pytest.raises(SystemExit) as exit_info, report_user_errors():  # as the CLI does
        run_ensemble(cfg, tmp_path)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: no registered version matches" in err
    assert "tags.group = 'no-such-sweep'" in err
