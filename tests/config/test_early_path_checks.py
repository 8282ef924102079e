"""A wrong ``data.root`` (or split CSV) is reported before torch and timm are imported (and, for
training, before MLflow: Hydra instantiates the training app's callbacks at every start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.config.test_help import imported, messages, run_app

NOT_BEFORE_THE_CHECK = {"torch", "timm", "torchvision"}
FAKE_RUN_ID = "0123456789abcdef0123456789abcdef"  # never looked up: the data check comes first


@pytest.mark.parametrize(
    ("app", "args"),
    [
        ("train", ["experiment=demo"]),
        ("evaluate", [f"model={FAKE_RUN_ID}"]),
        ("benchmark", []),
        ("prepare_data", []),
    ],
)
def test_a_missing_data_root_fails_before_torch_is_imported(
    app: str, args: list[str], tmp_path: Path
) -> None:
    proc = run_app(app, *args, f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = "\n".join(messages(proc)) + proc.stdout
    assert f"dataset folder {tmp_path / 'nowhere'} does not exist" in out
    assert "Traceback" not in out
    assert not NOT_BEFORE_THE_CHECK & imported(proc)
    if app == "train":
        assert "mlflow" not in imported(proc)


def test_a_folder_that_is_no_dataset_lists_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    proc = run_app(
        "train", "experiment=demo", f"data.root={tmp_path / 'photos'}", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 1
    lines = messages(proc)
    assert lines[0] == f"error: dataset {tmp_path / 'photos'} is not usable:"
    assert "metadata file" in lines[1] and "HAM10000_metadata.csv not found" in lines[1]
    assert "no image folder" in lines[2]
    assert not NOT_BEFORE_THE_CHECK & imported(proc)


def test_a_missing_split_csv_fails_before_torch_is_imported(tmp_path: Path) -> None:
    csv = tmp_path / "test.csv"
    proc = run_app(
        "evaluate", f"model={FAKE_RUN_ID}", f"split_csv={csv}", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 1
    assert messages(proc) == [f"error: split_csv={csv}: no such file"]
    assert not NOT_BEFORE_THE_CHECK & imported(proc)
