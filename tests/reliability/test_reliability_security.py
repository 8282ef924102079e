"""Security: no code runs from loaded files, servers stay local, credentials stay hidden."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from derm_exp.models.checkpoint import CheckpointError, load_checkpoint
from derm_exp.tracking import mlflow_run
from tests.conftest import compose_train
from tests.reliability.conftest import SECRET
from tests.reliability.helpers import ROOT


class _Payload:
    """Unpickling this object runs ``open(marker, "w")``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path: Path, marker: Path, wrap: bool = True) -> Path:
    obj = (
        {"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)} if wrap else _Payload(marker)
    )
    torch.save(obj, path)  # torch.save pickles: the file calls open() when unpickled
    return path


def test_crafted_checkpoint_runs_no_code(tmp_path: Path) -> None:
    from derm_exp.inference.loading import load_classifier

    marker = tmp_path / "pwned"
    ck = _crafted(tmp_path / "checkpoint_best.pt", marker)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError):
        load_classifier(ck)
    assert not marker.exists()
    # the same file unpickled the unsafe way does run the code: the test can fail
    torch.load(ck, weights_only=False)
    assert marker.exists()


def test_crafted_checkpoint_given_to_resume_runs_no_code(tmp_path: Path) -> None:
    from derm_exp.training.resume import load_for_resume

    marker = tmp_path / "pwned"
    ck = _crafted(tmp_path / "checkpoint_latest.pt", marker, wrap=False)
    cfg = compose_train(["model=tiny", f"resume={ck}"])
    with pytest.raises(CheckpointError):
        load_for_resume(cfg, [f"resume={ck}"])
    assert not marker.exists()


def test_crafted_pretrained_file_runs_no_code(tmp_path: Path) -> None:
    from derm_exp.models.backbone import PretrainedWeightsError
    from derm_exp.models.classifier import build_model

    marker = tmp_path / "pwned"
    weights = _crafted(tmp_path / "weights.pth", marker)
    cfg = compose_train(["model=tiny", f"model.pretrained_file={weights}"])
    with pytest.raises(PretrainedWeightsError, match="Could not read weights"):
        build_model(cfg.model, num_classes=7)
    assert not marker.exists()


def _torch_load_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "torch"
    ]


def test_every_torch_load_in_the_code_is_weights_only() -> None:
    """Static guard: each torch.load(...) in derm_exp/ and hydra_plugins/ passes
    weights_only=True; timm (pretrained files) defaults to weights_only=True as well."""
    import inspect

    import timm.models._helpers as timm_helpers

    files = [*(ROOT / "derm_exp").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
    calls = [(f, c) for f in files for c in _torch_load_calls(f)]
    assert calls, "no torch.load found: the scan is broken"
    for path, call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in kw, f"{path}:{call.lineno} torch.load without weights_only"
        value = kw["weights_only"]
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"
    default = inspect.signature(timm_helpers.load_state_dict).parameters["weights_only"].default
    assert default is True


def test_mlflow_ui_binds_localhost_only() -> None:
    """`make ui` serves on 127.0.0.1; nothing in the Makefile or configs binds all interfaces."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^ui:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "no ui target"
    commands = recipe.group(1)
    assert "mlflow ui" in commands or "mlflow server" in commands
    assert re.search(r"--host[ =]127\.0\.0\.1\b", commands)
    texts = [makefile, *(p.read_text() for p in (ROOT / "conf").rglob("*.yaml"))]
    assert not any("0.0.0.0" in t for t in texts)


def test_optuna_dashboard_defaults_to_localhost() -> None:
    """The sweeper's printed dashboard command relies on optuna-dashboard's default host."""
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard._cli import DashboardConfig

    assert DashboardConfig().host == "127.0.0.1"
    sweeper = (ROOT / "hydra_plugins").rglob("*.py")
    assert not any("0.0.0.0" in p.read_text() for p in sweeper)


def test_uri_credentials_are_masked_everywhere() -> None:
    uri = f"https://alice:{SECRET}@mlflow.example.org:5443/path?token={SECRET}2&x=1"
    masked = mlflow_run.mask_credentials(uri)
    assert SECRET not in masked and "alice:***@" in masked and "x=1" in masked
    params = mlflow_run.loggable_params({"tracking": {"uri": uri, "password": "p4ss"}})
    assert SECRET not in json.dumps(params) and params["tracking.password"] == "***"
    redacted = mlflow_run.redact_config({"a": [uri], "b": {"api_token": "t"}, "c": 3})
    assert SECRET not in json.dumps(redacted) and redacted["b"]["api_token"] == "***"


def test_run_url_hint_prints_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    class Run:
        class info:  # noqa: N801 - mimics mlflow's Run.info
            experiment_id = "7"

    class Client:
        def get_run(self, run_id):
            return Run()

    monkeypatch.setattr(mlflow_run, "MlflowClient", Client)
    monkeypatch.setattr(
        mlflow, "get_tracking_uri", lambda: f"https://alice:{SECRET}@mlflow.example.org:5443"
    )
    hint = mlflow_run.run_url_hint("abc")
    assert hint == "https://mlflow.example.org:5443/#/experiments/7/runs/abc"


def test_trained_run_persists_no_credentials(damaged_run) -> None:
    """Params, the logged config, both checkpoints and the log output: no password, no token."""
    mlflow.set_tracking_uri(damaged_run.cfg.tracking.uri)
    run = MlflowClient().get_run(damaged_run.run_id)
    assert SECRET not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert run.data.params["data.mirror"] == "https://alice:***@example.org/ham10000.zip"
    logged = mlflow.artifacts.load_text(f"runs:/{damaged_run.run_id}/config/resolved_config.json")
    assert SECRET not in logged
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt"):
        config = load_checkpoint(damaged_run.output_dir / name)["config"]
        assert SECRET not in json.dumps(config), name
    assert SECRET not in damaged_run.log_text


def test_resume_of_a_run_tracked_with_credentials_asks_for_the_uri(
    damaged_run, tmp_path: Path
) -> None:
    """Checkpoints never hold the password, so resuming asks for the URI instead of silently
    using a masked one."""
    from derm_exp.models.checkpoint import save_checkpoint
    from derm_exp.training.resume import ResumeError, load_for_resume

    ck = load_checkpoint(damaged_run.output_dir / "checkpoint_latest.pt")
    ck["config"]["tracking"]["uri"] = "https://alice:***@mlflow.example.org"
    path = save_checkpoint(ck, tmp_path / "checkpoint_latest.pt")
    cfg = damaged_run.cfg.copy()
    with open_dict(cfg):
        cfg.resume = str(path)
    with pytest.raises(ResumeError, match="credentials are never stored"):
        load_for_resume(cfg, [f"resume={path}"])


def test_registered_model_loading_runs_no_code(tmp_path: Path) -> None:
    """The pyfunc model (logged from code, no pickled class) loads its checkpoint artifact
    with weights_only: a crafted artifact fails without running anything."""
    from types import SimpleNamespace

    from derm_exp.inference.pyfunc_model import DermClassifierModel

    marker = tmp_path / "pwned"
    ck = _crafted(tmp_path / "checkpoint_best.pt", marker)
    with pytest.raises(CheckpointError):
        DermClassifierModel().load_context(SimpleNamespace(artifacts={"checkpoint": str(ck)}))
    assert not marker.exists()
