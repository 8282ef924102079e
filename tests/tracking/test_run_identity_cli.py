"""The README's training command on the demo experiment: runs are named and tagged by the options
the user typed (``model.head=acrnn loss=label_smoothing``), a resumed run keeps them, and the
ensemble query ``tags.loss=label_smoothing`` finds new and old versions. The same two runs show
the training log: freezing, unfreezing and resuming are logged, MLflow's notices are not. The two
runs are the session's ``options_run`` (tests/options_run.py), shared with the checkpoint tests."""

from __future__ import annotations

import pytest

from tests.options_run import OptionsRun

pytestmark = pytest.mark.slow


@pytest.fixture
def runs(options_run: OptionsRun) -> OptionsRun:
    """The session's acrnn + label-smoothing demo run and its resumption (tests/options_run.py)."""
    return options_run


def test_run_is_named_and_tagged_by_the_selected_options(runs: OptionsRun) -> None:
    client = runs.client
    run = client.get_run(runs.run_id)
    assert run.info.run_name == "test_efficientnet-acrnn-label_smoothing-s42"
    tags, params = run.data.tags, run.data.params
    expected = {"model": "tiny", "head": "acrnn", "loss": "label_smoothing", "augment": "light"}
    expected |= {"experiment": "demo", "optimizer": "adamw", "scheduler": "cosine_warmup"}
    expected |= {"head_class": "ACRNNHead", "loss_class": "CrossEntropyLoss"}
    assert {k: tags.get(k) for k in expected} == expected
    assert tags["class_weights"] == "none"
    assert params["choice.model/head"] == "acrnn" and params["choice.experiment"] == "demo"
    assert params["loss.name"] == "label_smoothing"
    assert not any(k.startswith("choice.hydra") for k in params)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_resumed_run_keeps_its_options(runs: OptionsRun) -> None:
    run = runs.client.get_run(runs.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["derm_exp.resumed_at_epoch"] == "2"
    assert run.data.tags["head"] == "acrnn" and run.data.tags["loss"] == "label_smoothing"
    assert run.data.tags["experiment"] == "demo" and run.data.tags["model"] == "tiny"


def test_log_names_freezing_and_resuming_without_mlflow_notices(runs: OptionsRun) -> None:
    first = runs.first.stdout + runs.first.stderr
    resumed = runs.resumed.stdout + runs.resumed.stderr
    assert "epoch 1: backbone frozen through epoch 1, training the head only (lr 0.003)" in first
    assert "epoch 2: backbone unfrozen, fine-tuning all layers (lr 0.003)" in first
    assert f"resuming run {runs.run_id} from epoch 3 of 3" in resumed
    assert "epoch 3: backbone unfrozen, fine-tuning all layers (lr 0.003)" in resumed
    # Both runs registered a version (the second into an existing model: MLflow's fluent API
    # would say "already exists") and copied a checkpoint into it (its progress bar).
    versions = runs.client.search_model_versions("name = 'derm-classifier'")
    assert len([v for v in versions if "head_class" in v.tags]) == 2
    assert "registered models:/derm-classifier/2" in runs.resumed.stdout
    for out in (first, resumed):
        for notice in ("Downloading artifacts", "already exists", "Successfully registered"):
            assert notice not in out
        assert "Created version" not in out


def test_ensemble_query_by_option_name_finds_new_and_old_versions(runs: OptionsRun) -> None:
    from derm_exp.tracking.registry_search import search_versions

    client = runs.client
    new = search_versions(tags={"loss": "label_smoothing", "head": "acrnn"})
    assert new and {v.run_id for v in new} == {runs.run_id}
    assert all(v.tags["loss"] == "label_smoothing" for v in new)
    assert search_versions(tags={"loss": "cross_entropy"}) == []
    # A version registered before option names: class names under head/loss, no *_class tags.
    old_tags = {k: v for k, v in new[0].tags.items() if not k.endswith("_class")}
    old_tags |= {"head": "ACRNNHead", "loss": "CrossEntropyLoss"}
    old = client.create_model_version(
        "derm-classifier", new[0].source, run_id=runs.run_id, tags=old_tags
    )
    both = {v.version for v in new} | {old.version}
    assert {v.version for v in search_versions(tags={"loss": "label_smoothing"})} == both
    assert {v.version for v in search_versions(tags={"head": "ACRNNHead"})} == both
    assert search_versions(tags={"loss": "cross_entropy"}) == []  # its run smoothed labels
    assert search_versions(tags={"head": "simple"}) == []
