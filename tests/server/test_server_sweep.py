"""Two sweeper processes share one Optuna study on the server's PostgreSQL, as a lab would run
workers side by side (the README's smoke sweep, 1 epoch per trial)::

    export PGPASSFILE=<server folder>/pgpass
    python -m derm_exp.train -m hparams_search=optuna_smoke experiment=demo trainer.max_epochs=1 \
        tracking.uri=http://127.0.0.1:PORT \
        hydra.sweeper.storage=postgresql+psycopg://derm@127.0.0.1:DBPORT/optuna

started twice at once with ``hydra.sweeper.n_trials=6``: together they run exactly 6 trials,
numbered 0-5 once each, into one MLflow experiment, and no password shows up anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.server.helpers import Server, cli_env, demo_args

pytestmark = pytest.mark.slow

STUDY = "shared_smoke"


def _sweeper(server: Server, demo_dir: Path, tmp: Path, worker: int) -> subprocess.Popen[str]:
    args = [
        "-m",
        "hparams_search=optuna_smoke",
        "experiment=demo",
        "trainer.max_epochs=1",
        *demo_args(demo_dir, server.uri),
        f"hydra.sweeper.storage={server.optuna_url()}",
        f"hydra.sweeper.study_name={STUDY}",
        "hydra.sweeper.n_trials=6",
        f"hydra.sweep.dir={tmp}/worker{worker}",
        f"hydra.sweeper.best_config_dir={tmp}/best{worker}",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "derm_exp.train", *args],
        cwd=tmp,
        env=cli_env(PGPASSFILE=str(server.pgpass)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_sweepers_share_one_study_and_stop_together_at_n_trials(
    server: Server, demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = [_sweeper(server, demo_dir, tmp_path, i) for i in (0, 1)]
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
        assert "Traceback" not in out + err and "error:" not in err
        assert "of n_trials=6 finished" in out

    monkeypatch.setenv("PGPASSFILE", str(server.pgpass))
    study = optuna.load_study(study_name=STUDY, storage=server.optuna_url())
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), trials
    # each worker ran some of them: job folders are named by trial number
    ran = [
        {p.name for p in (tmp_path / f"worker{i}").iterdir() if p.name.isdigit()} for i in (0, 1)
    ]
    assert ran[0] and ran[1] and not ran[0] & ran[1], ran
    assert ran[0] | ran[1] == {str(n) for n in range(6)}

    client = MlflowClient(server.uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "derm_exp"]
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.optuna_study = '{STUDY}' and tags.optuna_trial != ''"
    )
    trial_runs = [r for r in runs if r.data.tags.get("derm_exp.kind") == "training"]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in trial_runs) == list(range(6))
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in trial_runs}

    saved = [p.read_text() for p in tmp_path.rglob("*.yaml")]
    assert any(server.optuna_url() in text for text in saved)  # the URL is there, no password
    server.assert_no_secret(
        *(text for pair in outputs for text in pair),
        *saved,
        *(json.dumps([r.data.params, r.data.tags]) for r in runs),
        json.dumps([study.user_attrs, [t.user_attrs for t in trials]]),
    )
