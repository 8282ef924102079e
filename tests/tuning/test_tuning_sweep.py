"""End-to-end Optuna sweeps through Hydra (``-m hparams_search=optuna_smoke``) in a subprocess.

The README's own pair of commands on the demo experiment is followed too (only where things are
stored is redirected into tmp folders, and the test bootstrap is skipped):

    python -m derm_exp.train -m hparams_search=optuna_smoke experiment=demo trainer.max_epochs=2
    python -m derm_exp.train experiment=best_optuna_smoke

The smoke search space has a learning rate that learns (0.01) and one that cannot (1e-12); with
MedianPruner(n_startup_trials=1, n_warmup_steps=0) the latter is pruned after its first epoch
once a 0.01 trial has completed. The seeded sampler fixes the trial order (see the config).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from derm_exp.config import PROJECT_ROOT
from tests.conftest import compose_train

pytestmark = pytest.mark.slow

README_SWEEP = ["-m", "hparams_search=optuna_smoke", "experiment=demo", "trainer.max_epochs=2"]
# Keys a trial sets for the sweep only: its run name and tags, registry off (trials are
# candidates), the objective it returns. Everything else must be reproduced by the retrain.
SWEEP_ONLY = {
    "run_name",
    "registry.enabled",
    "objective",
    "tracking.tags.optuna_study",
    "tracking.tags.optuna_trial",
}


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from derm_exp.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp("sweep_data")
    generate_demo_dataset(root, n_images=160, seed=0, size=(64, 48))
    return root


def _sweep(tmp: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable,
        "-m",
        "derm_exp.train",
        "-m",
        "hparams_search=optuna_smoke",
        "model=tiny",
        "data.image_size=32",
        "trainer.max_epochs=2",
        "evaluation.n_boot=0",
        "trainer.ema.enabled=false",
        "data.num_workers=0",
        "device=cpu",
        f"data.root={data}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"tracking.artifact_root={tmp}/mlruns",
        f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
        f"hydra.sweep.dir={tmp}/multirun",
        f"hydra.sweeper.best_config_dir={tmp}/conf/experiment",
        *extra,
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        args, cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _study(tmp: Path) -> optuna.Study:
    return optuna.load_study(study_name="optuna_smoke", storage=f"sqlite:///{tmp}/optuna.db")


def test_sweep_prunes_resumes_and_writes_the_best_experiment(
    tmp_path: Path, sweep_data: Path
) -> None:
    first = _sweep(tmp_path, sweep_data, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [t.state for t in _study(tmp_path).trials] == [TrialState.COMPLETE, TrialState.PRUNED]

    second = _sweep(tmp_path, sweep_data)  # the config's n_trials=4: continues the same study
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 of n_trials=4 finished (2 complete, 2 pruned)" in second.stdout
    trials = _study(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    for t in trials:  # the rate that cannot learn is pruned once a good trial has completed
        expected = TrialState.PRUNED if t.params["optimizer.lr"] == 1e-12 else TrialState.COMPLETE
        assert t.state == expected, (t.number, t.params, t.intermediate_values)
        assert list(t.intermediate_values) == ([1] if expected == TrialState.PRUNED else [1, 2])

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("derm_exp")
    [parent] = client.search_runs([exp.experiment_id], "tags.`derm_exp.kind` = 'optuna_study'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best.trial"] == "0"
    for t in trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna_study"] == "optuna_smoke"
        assert run.data.tags["optuna_trial"] == str(t.number)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["optimizer.lr"] == str(t.params["optimizer.lr"])
        pruned = t.state == TrialState.PRUNED
        assert run.info.status == ("KILLED" if pruned else "FINISHED")
        assert (run.data.tags.get("derm_exp.pruned") == "true") is pruned

    best = tmp_path / "conf" / "experiment" / "best_optuna_smoke.yaml"
    assert best.read_text().startswith("# @package _global_")
    cfg = compose_train(
        ["experiment=best_optuna_smoke", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    )
    assert cfg.optimizer.lr == 0.01
    assert cfg.scheduler.name == "none"  # fixed params of the search config are kept
    assert cfg.trainer.monitor == "val/loss"
    assert cfg.model.name == "test_efficientnet"
    assert cfg.data.root == str(sweep_data)
    assert cfg.registry.enabled is True  # sweep-only settings are not
    assert not (PROJECT_ROOT / "conf" / "experiment" / "best_optuna_smoke.yaml").exists()


def test_a_test_metric_objective_fails_before_any_trial(tmp_path: Path, sweep_data: Path) -> None:
    result = _sweep(tmp_path, sweep_data, "objective=test/balanced_accuracy")
    assert result.returncode == 2
    assert "error: objective='test/balanced_accuracy': a sweep optimises a validation" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "optuna.db").exists()  # refused before the study was opened
    assert not (tmp_path / "multirun" / "0").exists()  # ... and before any trial


def _stores(tmp: Path, demo_dir: Path) -> list[str]:
    return [
        f"data.demo.dir={demo_dir}",
        "evaluation.n_boot=0",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"tracking.artifact_root={tmp}/mlruns",
        f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
        f"hydra.sweep.dir={tmp}/multirun/${{now:%Y-%m-%d}}/${{now:%H-%M-%S}}",
        f"hydra.sweeper.best_config_dir={tmp}/conf/experiment",
    ]


def _train(cwd: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "derm_exp.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _job_config(job_dir: Path) -> dict[str, Any]:
    """A job's composed config as Hydra saved it (interpolations unresolved)."""
    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    return _flat(OmegaConf.to_container(cfg, resolve=False))


def test_best_trial_file_of_the_readme_sweep_retrains_the_best_trial(tmp_path: Path) -> None:
    sweep = _train(tmp_path, [*README_SWEEP, *_stores(tmp_path, tmp_path / "demo")])
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    best = tmp_path / "conf" / "experiment" / "best_optuna_smoke.yaml"
    text = best.read_text()
    assert text.startswith("# @package _global_")
    # the retrain command as the sweep prints it, run as printed (plus where Hydra writes)
    lines = sweep.stdout.splitlines()
    printed = lines[lines.index(f"  best config: {best}") + 1].strip()
    assert printed.startswith("python -m derm_exp.train experiment=best_optuna_smoke ")
    assert f"Reproduce: {printed}" in text
    retrain = _train(tmp_path, [*shlex.split(printed)[3:], f"hydra.run.dir={tmp_path}/retrain"])
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    assert "MLflow run id:" in retrain.stdout

    number = _study(tmp_path).best_trial.number
    [trial_dir] = tmp_path.glob(f"multirun/*/*/{number}")
    trial, again = _job_config(trial_dir), _job_config(tmp_path / "retrain")
    differ = {k for k in trial.keys() | again.keys() if trial.get(k) != again.get(k)}
    assert differ <= SWEEP_ONLY, {k: (trial.get(k), again.get(k)) for k in differ - SWEEP_ONLY}
    assert again["scheduler.name"] == "none"  # a fixed param of the search config
    assert again["trainer.max_epochs"] == 2  # from the sweep command line, beats demo's 6
    assert again["model.name"] == "test_efficientnet"  # experiment=demo's tiny model
    assert again["registry.enabled"] is True  # sweep-only settings are not reproduced
