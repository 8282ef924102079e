"""The README's commands end to end: the demo training run (the session's ``demo_run``, see
tests/demo_run.py) logs the explanation gallery, and ``python -m derm_exp.explain`` explains its
checkpoint for a file and a folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import compose_train
from tests.demo_run import DemoRun
from tests.inference.conftest import run_cli


@pytest.mark.slow
def test_training_logs_the_gallery_and_sanity_metrics(demo_run: DemoRun, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=demo_run.uri)
    run = client.get_run(demo_run.run_id)
    assert "derm_exp.explain_gallery_error" not in run.data.tags
    names = {a.path for a in client.list_artifacts(demo_run.run_id, "explanations")}
    galleries = {n for n in names if n.startswith("explanations/gallery_") and n.endswith(".png")}
    assert len(galleries) >= 2, names  # the demo test split holds several classes
    assert {"explanations/sanity.png", "explanations/sanity.json"} <= names
    metrics = run.data.metrics
    for key in ("explain/randomisation_spearman", "explain/class_sensitivity_spearman"):
        assert key in metrics and -1.0 <= metrics[key] <= 1.0, (key, metrics)
    local = client.download_artifacts(demo_run.run_id, sorted(galleries)[0], str(tmp_path))
    assert Image.open(local).size[0] > 100


@pytest.mark.slow
def test_explain_one_file(demo_run: DemoRun, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    proc = run_cli(
        "derm_exp.explain",
        f"model={demo_run.checkpoint}",
        f"image={demo_run.images[0]}",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "target=mel",
        "sanity=true",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figure = out / f"{demo_run.images[0].stem}_gradcam.png"
    assert figure.is_file() and Image.open(figure).size[0] > 300
    assert "not a medical device" in proc.stdout
    assert not (out / "contact_sheet.png").exists()
    sanity = json.loads((out / "sanity.json").read_text())
    assert sanity["method"] == "gradcam" and sanity["n_images"] == 1
    assert "Spearman trained vs randomised weights" in proc.stdout
    assert (out / "sanity.png").is_file()


@pytest.mark.slow
def test_explain_a_folder_by_run_id_with_a_bad_file(demo_run: DemoRun, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in demo_run.images[:2]:
        shutil.copy(image, folder / image.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "maps"
    proc = run_cli(
        "derm_exp.explain",
        f"model={demo_run.run_id}",
        f"tracking.uri={demo_run.uri}",
        f"image={folder}",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "method=integrated_gradients",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*_integrated_gradients.png")) == sorted(
        f"{p.stem}_integrated_gradients.png" for p in demo_run.images[:2]
    )
    assert (out / "contact_sheet.png").is_file()
    assert "broken.jpg: unreadable" in proc.stdout and "1 of 3 images" in proc.stderr


@pytest.mark.slow
def test_a_method_that_does_not_apply_is_one_error_line(demo_run: DemoRun, tmp_path: Path):
    proc = run_cli(
        "derm_exp.explain",
        f"model={demo_run.checkpoint}",
        f"image={demo_run.images[0]}",
        f"out={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "method=attention",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: method=attention needs a head with its own attention map" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["method=lime"], "unknown explanation method"),
        (["target=melanoma"], "unknown target class 'melanoma'"),
        ([], "no image given"),
        (["model_ref=null"], "model"),
    ],
)
def test_user_mistakes_are_user_errors(trained_model, tmp_path: Path, args, error) -> None:
    from derm_exp.errors import UserError
    from derm_exp.explain import explain

    image = sorted((Path(trained_model.data_root) / "images").glob("*.jpg"))[0]
    base = [f"model_ref={trained_model.checkpoint}", f"out={tmp_path}"]
    base += [] if args == [] else [f"image={image}"]
    cfg = compose_train([*base, *args], config_name="explain")
    with pytest.raises(UserError, match=error):
        explain(cfg, tmp_path)


def test_help_explains_the_command() -> None:
    proc = run_cli("derm_exp.explain", "--help")
    assert proc.returncode == 0
    for text in ("model=<checkpoint | run id", "method=integrated_gradients", "sanity=true"):
        assert text in proc.stdout
    assert "not a medical device" in proc.stdout
