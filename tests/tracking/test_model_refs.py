"""One parser for every model reference: paths, output folders, run ids, ``models:/`` URIs,
lists and ``group=``, with one set of error messages (no MLflow or torch needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from derm_exp.errors import ModelSourceError, RegistryError
from derm_exp.tracking.model_refs import (
    LATEST_CHECKPOINT,
    ModelRefError,
    parse_ref,
    parse_registry_uri,
    parse_selection,
    ref_list,
)

RUN = "0123456789abcdef0123456789abcdef"


def test_paths_and_folders(tmp_path: Path) -> None:
    best = tmp_path / "checkpoint_best.pt"
    best.write_bytes(b"x")
    for given in (best, tmp_path, str(tmp_path)):
        ref = parse_ref(given)
        assert (ref.kind, ref.path) == ("checkpoint", best.resolve())
    (tmp_path / LATEST_CHECKPOINT).write_bytes(b"y")
    assert parse_ref(tmp_path, "resume", LATEST_CHECKPOINT).path.name == LATEST_CHECKPOINT
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelRefError, match=f"model={empty}: folder without a checkpoint_best.pt"):
        parse_ref(empty)


def test_run_ids_and_registry_uris() -> None:
    assert parse_ref(RUN).kind == "run" and parse_ref(RUN).run_id == RUN
    v3, latest, alias = (
        parse_ref(u) for u in ("models:/m/3", "models:/m/latest", "models:/derm-classifier@seed-7")
    )
    assert (v3.kind, v3.name, v3.version, v3.alias) == ("registry", "m", "3", None)
    assert latest.version == "latest" and latest.uri == "models:/m/latest"
    assert (alias.name, alias.alias, alias.uri) == (
        "derm-classifier",
        "seed-7",
        "models:/derm-classifier@seed-7",
    )


def test_one_set_of_messages() -> None:
    for bad in ("models:/m", "models:/m/3/x", "models:/m@"):
        with pytest.raises(ModelRefError, match=r"not a registered model URI; write models:/NAME/"):
            parse_ref(bad)
    with pytest.raises(ModelRefError, match="models:/NAME/VERSION, models:/NAME/latest or"):
        parse_registry_uri("derm-classifier/3")
    with pytest.raises(
        ModelRefError,
        match=r"model=nope: no such checkpoint file, and not an MLflow run id \(32 hex "
        r"characters\) or a registered model URI",
    ):
        parse_ref("nope")
    with pytest.raises(ModelRefError, match="no model given"):
        parse_ref("  ")
    # Loaders catch ModelSourceError, registry queries RegistryError: the same error for both.
    assert issubclass(ModelRefError, ModelSourceError) and issubclass(ModelRefError, RegistryError)


def test_resume_takes_checkpoints_and_runs_only() -> None:
    with pytest.raises(ModelRefError, match=r"^resume=nope: no such checkpoint file, and not an "):
        parse_ref("nope", "resume", LATEST_CHECKPOINT, kinds=("checkpoint", "run"))
    with pytest.raises(ModelRefError, match="resume=models:/m/1: a registered model cannot be"):
        parse_ref("models:/m/1", "resume", LATEST_CHECKPOINT, kinds=("checkpoint", "run"))


def test_lists_and_groups() -> None:
    assert ref_list(None) == [] and ref_list(" ") == []
    assert ref_list(f" {RUN} ") == [RUN]
    assert ref_list(["models:/m/1", "", RUN]) == ["models:/m/1", RUN]
    refs = parse_selection(["models:/m/1", RUN])
    assert [r.kind for r in refs] == ["registry", "run"]
    assert parse_selection(None, group="2026-01-01/10-00-00") == []
    with pytest.raises(ModelRefError, match="either model=... or group=<sweep id>, not both"):
        parse_selection(RUN, group="g")
    with pytest.raises(ModelRefError, match="no model given: pass model=<"):
        parse_selection([])
