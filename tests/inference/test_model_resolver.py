"""A reference names the same file in every tool: ``models:/`` the registered version's own
checkpoint (even when its run's checkpoint has moved on), a run id the run's artifact."""

from __future__ import annotations

import pytest

from derm_exp.errors import ModelSourceError, RegistryError
from tests.inference.conftest import TrainedModel

NAME = "resolver-test"


@pytest.fixture(scope="module")
def registered(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A version of the session model's run whose checkpoint differs from the run's artifact
    (as after a resume that found a better epoch): temperature 2.5."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from derm_exp.inference.pyfunc_model import DermClassifierModel
    from derm_exp.models.checkpoint import save_checkpoint
    from derm_exp.training.registration import log_and_register

    mlflow.set_tracking_uri(trained_model.tracking_uri)
    ck = torch.load(trained_model.checkpoint, weights_only=True)
    other = tmp_path_factory.mktemp("registered") / "checkpoint_best.pt"
    save_checkpoint({**ck, "temperature": 2.5}, other)
    version = log_and_register(
        NAME,
        DermClassifierModel,
        {"checkpoint": str(other)},
        "model",
        trained_model.run_id,
        {"seed": "0", "val_balanced_accuracy": "0.5"},
    )
    MlflowClient().set_registered_model_alias(NAME, "champion", version.version)
    return f"models:/{NAME}@champion"


def test_a_registry_uri_loads_the_registered_checkpoint_everywhere(
    trained_model: TrainedModel, registered: str
) -> None:
    from derm_exp.inference.ensemble import EnsemblePredictor, load_ensemble_predictor
    from derm_exp.inference.members import resolve_member, select_members
    from derm_exp.inference.predictor import SkinLesionPredictor
    from derm_exp.inference.sources import peek_checkpoint, resolve_source

    uri = trained_model.tracking_uri
    source = resolve_source(registered, uri)
    assert (source.kind, source.run_id, source.model_version) == (
        "registry",
        trained_model.run_id,
        "1",
    )
    assert peek_checkpoint(source.checkpoint)["temperature"] == 2.5
    assert "checkpoints" not in source.checkpoint.parts  # not the run's checkpoints/ folder
    by_run = resolve_source(trained_model.run_id, uri)
    assert by_run.checkpoint.parts[-2:] == ("checkpoints", "checkpoint_best.pt")
    assert peek_checkpoint(by_run.checkpoint)["temperature"] != 2.5

    same = [
        resolve_source(f"models:/{NAME}/1", uri).checkpoint,
        resolve_source(f"models:/{NAME}/latest", uri).checkpoint,
        resolve_member(registered, tracking_uri=uri).checkpoint,
        select_members(NAME)[0].checkpoint,  # MLflow's current URI: the session store
        load_ensemble_predictor([registered], device="cpu", tracking_uri=uri).members[0].checkpoint,
        EnsemblePredictor.from_registry(NAME, device="cpu", tracking_uri=uri).members[0].checkpoint,
    ]
    assert same == [source.checkpoint] * len(same)
    predictor = SkinLesionPredictor.from_registry(registered, uri, device="cpu")
    assert predictor.temperature == 2.5
    assert SkinLesionPredictor.from_run(trained_model.run_id, uri, device="cpu").temperature != 2.5
    member = resolve_member(registered, tracking_uri=uri)
    assert (member.name, member.model_version, member.tags["seed"]) == (f"{NAME}/1", "1", "0")


def test_missing_versions_read_the_same_everywhere(
    trained_model: TrainedModel, registered: str
) -> None:
    from derm_exp.inference.members import resolve_member
    from derm_exp.inference.sources import resolve_source
    from derm_exp.tracking.model_lookup import resolve_version

    uri = trained_model.tracking_uri
    messages = set()
    for call in (resolve_version, resolve_source, lambda r, u: resolve_member(r, tracking_uri=u)):
        for error in (ModelSourceError, RegistryError):
            with pytest.raises(error, match="not found in the registry") as info:
                call(f"models:/{NAME}/9", uri)
            messages.add(str(info.value).split(" (")[0])
    assert messages == {f"model=models:/{NAME}/9: not found in the registry at {uri}"}


def test_resume_finds_a_runs_latest_checkpoint(
    trained_model: TrainedModel, registered: str
) -> None:
    from derm_exp.training.resume import ResumeError, locate_checkpoint

    uri = trained_model.tracking_uri
    latest = trained_model.output_dir / "checkpoint_latest.pt"
    assert locate_checkpoint(trained_model.run_id, uri) == latest  # the run's output folder
    assert locate_checkpoint(str(trained_model.output_dir), uri) == latest.resolve()
    with pytest.raises(ResumeError, match=f"no MLflow run {'0' * 32} in {uri}"):
        locate_checkpoint("0" * 32, uri)
    with pytest.raises(ResumeError, match="a registered model cannot be used here"):
        locate_checkpoint(registered, uri)
