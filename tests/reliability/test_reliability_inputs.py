"""Bad inputs: every one gives a clear message or a counted, logged skip, never a traceback."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, open_dict
from PIL import Image

from derm_exp.data.dataset import LesionDataset
from derm_exp.data.errors import DataValidationError
from derm_exp.data.images import load_image
from derm_exp.models.classifier import build_model
from derm_exp.training.data_setup import split_frame
from derm_exp.training.validate import ConfigError, validate_config, validate_model
from tests.conftest import compose_train
from tests.reliability.helpers import cli_args, run_train

# --- images ---------------------------------------------------------------------------------


def test_unreadable_images_are_skipped_counted_and_logged(damaged_run) -> None:
    """Zero-byte, truncated, text-as-.jpg and decompression-bomb files: training finishes, each
    is logged, counted (metric + tag) and listed in the run's data/skipped_images.txt."""
    mlflow.set_tracking_uri(damaged_run.cfg.tracking.uri)
    client = MlflowClient()
    run = client.get_run(damaged_run.run_id)
    assert run.info.status == "FINISHED"
    bad = {str(p) for p in damaged_run.bad.values()}
    assert run.data.tags["derm_exp.skipped_images"] == str(len(bad))
    listed = mlflow.artifacts.load_text(f"runs:/{damaged_run.run_id}/data/skipped_images.txt")
    assert set(listed.split()) == bad
    history = client.get_metric_history(damaged_run.run_id, "data/skipped_images")
    assert [m.step for m in history] == [1, 2] and history[-1].value >= 1
    for path in bad:
        assert f"cannot read image {path}" in damaged_run.log_text
    assert "DecompressionBombError" in damaged_run.log_text
    assert f"{len(bad)} unreadable image(s) were skipped" in damaged_run.log_text


def test_awkward_formats_are_converted_not_skipped(damaged_run) -> None:
    """Grayscale, RGBA, CMYK, 16-bit, palette and EXIF-rotated files are used, as 8-bit RGB."""
    listed = mlflow.artifacts.load_text(f"runs:/{damaged_run.run_id}/data/skipped_images.txt")
    for kind, path in damaged_run.odd.items():
        assert str(path) not in listed, kind
        img = load_image(str(path))
        assert img.mode == "RGB", kind
        expected = (48, 64) if kind == "exif_rotated" else (64, 48)
        assert img.size == expected, kind
    raw = np.asarray(Image.open(damaged_run.odd["uint16"]), dtype=np.float64)
    deep = np.asarray(load_image(str(damaged_run.odd["uint16"])))[..., 0]
    assert raw.max() > 255 and np.array_equal(deep, np.rint(raw / 257))  # scaled, not clipped


def test_bad_image_with_error_policy_stops_naming_the_file(
    damaged_run, rel_cfg: DictConfig, tmp_path: Path
) -> None:
    from derm_exp.training.trainer import fit

    with open_dict(rel_cfg):
        rel_cfg.data.root = damaged_run.cfg.data.root
        rel_cfg.data.on_bad_image = "error"
        rel_cfg.trainer.max_epochs = 1
    with pytest.raises(DataValidationError, match=r"cannot read image .*ISIC_\d+\.(jpg|png)"):
        fit(rel_cfg, tmp_path / "out")


def test_bad_image_in_a_worker_process_is_one_clean_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DataLoader workers re-raise with the worker traceback in the message: only the original
    message is shown."""
    from torch.utils.data import DataLoader

    from derm_exp.errors import report_user_errors

    bad = tmp_path / "ISIC_0000001.jpg"
    bad.write_bytes(b"")
    ds = LesionDataset(pd.DataFrame({"path": [str(bad)], "label": [0]}), on_bad_image="error")
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        list(DataLoader(ds, batch_size=1, num_workers=1))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {bad}") and "(in a DataLoader worker)" in err
    assert "Traceback" not in err


# --- metadata ---------------------------------------------------------------------------------


def _rewrite(root: Path, edit) -> Path:
    csv = root / "HAM10000_metadata.csv"
    df = pd.read_csv(csv, dtype=str)
    out = edit(df)
    if isinstance(out, str):
        csv.write_text(out)
    else:
        out.to_csv(csv, index=False)
    return root


def _first(df: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    df.loc[df.index[0], column] = value
    return df


def _first_lesion(df: pd.DataFrame, dx: str) -> str:
    return df.loc[df["dx"] == dx, "lesion_id"].iloc[0]


METADATA_CASES = {
    "missing_column": (lambda df: df.drop(columns="dx"), "lacks required column(s) ['dx']"),
    "unknown_dx": (lambda df: _first(df, "dx", "melanoma"), "unknown dx label(s) 'melanoma': 1"),
    "empty_lesion_id": (lambda df: _first(df, "lesion_id", ""), "column 'lesion_id' is empty"),
    "nan_dx": (lambda df: _first(df, "dx", "NaN"), "column 'dx' is empty in 1 row(s)"),
    "duplicate_image_id": (
        lambda df: pd.concat([df, df.iloc[:1]]),
        "appear in more than one row",
    ),
    "dotdot_image_id": (
        lambda df: _first(df, "image_id", "../outside"),
        "path separator or '..'",
    ),
    "absolute_image_id": (
        lambda df: _first(df, "image_id", "/etc/passwd"),
        "path separator or '..'",
    ),
    "empty_csv": (lambda df: "", "is empty; it needs a header line"),
    "header_only": (lambda df: ",".join(df.columns) + "\n", "has a header but no rows"),
    "missing_image": (
        lambda df: pd.concat([df, df.iloc[:1].assign(image_id="ISIC_missing")]),
        "1 metadata row(s) have no image file: ISIC_missing",
    ),
    "class_too_small": (
        lambda df: df[(df["dx"] != "df") | (df["lesion_id"] == _first_lesion(df, "df"))],
        "df has 1 lesion(s)",
    ),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_metadata_problem_stops_before_training(case: str, data_copy: Path) -> None:
    """Each metadata problem is a DataValidationError naming the dataset and the fix."""
    edit, expected = METADATA_CASES[case]
    root = _rewrite(data_copy, edit)
    cfg = compose_train(["data.root=" + str(root)])
    with pytest.raises(DataValidationError) as info:
        split_frame(cfg.data)
    assert expected in str(info.value)


def test_path_traversal_never_reads_outside_the_root(data_copy: Path) -> None:
    """An image id with '..' is refused even when the file it points at exists."""
    outside = data_copy.parent / "outside.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    root = _rewrite(data_copy, lambda df: _first(df, "image_id", "../../outside"))
    with pytest.raises(DataValidationError, match="path separator or '..'"):
        split_frame(compose_train(["data.root=" + str(root)]).data)


def test_image_without_metadata_row_is_ignored_with_a_warning(
    data_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Image.new("RGB", (8, 8)).save(data_copy / "images" / "ISIC_extra.jpg")
    frame = split_frame(compose_train(["data.root=" + str(data_copy)]).data)
    assert "ISIC_extra" not in set(frame["image_id"])
    assert "have no metadata row and are ignored: ISIC_extra" in caplog.text


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be > 0"),
        (["data.batch_size=0"], "data.batch_size=0 must be >= 1"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "with a sum < 1"),
        (["data.image_size=abc"], "data.image_size='abc' must be an integer or null"),
        (["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5 must be an integer"),
        (["data.sampler=balanced"], "data.sampler='balanced': choose one of none, weighted"),
        (["trainer.monitor=val/bogus"], "must be a validation metric"),
        (["objective=test/balanced_accuracy"], "test metrics are never optimised"),
    ],
    ids=[
        "negative_lr",
        "batch_size_0",
        "fractions_sum_1",
        "image_size_text",
        "epochs_float",
        "unknown_sampler",
        "unknown_monitor",
        "test_objective",
    ],
)
def test_invalid_config_values_are_listed(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        validate_config(compose_train(["model=tiny", *overrides]))
    assert message in str(info.value)


def test_unknown_device_is_a_config_error() -> None:
    from derm_exp.runtime import resolve_device

    with pytest.raises(ConfigError, match="device='gpu0' is not a device"):
        resolve_device("gpu0")


def test_image_size_smaller_than_backbone_downsampling() -> None:
    cfg = compose_train(["model=tiny", "data.image_size=32"])
    model = build_model(cfg.model, 7, image_size=16)  # validate_config alone refuses 16
    with pytest.raises(ConfigError, match=r"smaller than the total downsampling .*\(32 px\)"):
        validate_model(cfg, model)


def test_rot90_with_non_square_input_is_refused() -> None:
    cfg = compose_train(["model=tiny", "data.image_size=32", "augment=heavy"])
    model = build_model(cfg.model, 7, image_size=32)
    model.data_config["input_size"] = (3, 32, 48)
    with pytest.raises(ConfigError, match="rot90 needs a square input size"):
        validate_model(cfg, model)


def test_model_refusing_the_image_size_is_caught_before_training() -> None:
    cfg = compose_train(["model=tiny", "model.name=test_vit", "data.image_size=64"])
    model = build_model(cfg.model, 7, image_size=64)
    with pytest.raises(ConfigError, match="does not accept 64x64 images"):
        validate_model(cfg, model)


def test_resume_from_a_missing_file(rel_cfg: DictConfig, tmp_path: Path) -> None:
    from derm_exp.training.resume import ResumeError
    from derm_exp.training.trainer import fit

    with open_dict(rel_cfg):
        rel_cfg.resume = str(tmp_path / "nope" / "checkpoint_latest.pt")
    with pytest.raises(ResumeError, match="no such checkpoint file"):
        fit(rel_cfg, tmp_path / "out")


def test_resume_from_a_best_checkpoint_says_which_file_to_use(damaged_run, tmp_path) -> None:
    from derm_exp.training.resume import ResumeError, load_for_resume

    cfg = damaged_run.cfg.copy()
    with open_dict(cfg):
        cfg.resume = str(damaged_run.output_dir / "checkpoint_best.pt")
    with pytest.raises(ResumeError, match="is not a derm_exp checkpoint_latest.pt"):
        load_for_resume(cfg, [])


# --- the command line: `error: ...`, non-zero exit, no traceback ----------------------------


@pytest.mark.parametrize(
    ("extra", "rc", "message"),
    [
        (["trainer.max_epoch=3"], 2, "error: unknown config key 'trainer.max_epoch'. Valid keys"),
        (["model=efficientnet_v2_z"], 2, "error: unknown option 'efficientnet_v2_z' for config"),
        (["model.head=mlp"], 2, "Valid options: acrnn, simple"),
    ],
    ids=["unknown_key", "unknown_model_option", "unknown_head_option"],
)
def test_cli_config_typos(extra, rc, message, tmp_path: Path, rel_data: Path) -> None:
    result = run_train([*cli_args(tmp_path, rel_data), *extra])
    assert result.returncode == rc, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["data.image_size=abc", "optimizer.lr=-1"], "error: invalid configuration:\n  - "),
        ([], "error: dataset "),
    ],
    ids=["bad_values", "broken_metadata"],
)
def test_cli_user_errors_exit_1_without_traceback(
    extra, message, tmp_path: Path, data_copy: Path
) -> None:
    """The dataset has an unknown label too: config errors are found before it."""
    _rewrite(data_copy, lambda df: _first(df, "dx", "melanoma"))
    result = run_train([*cli_args(tmp_path, data_copy), *extra])
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out" / "checkpoint_latest.pt").exists()
