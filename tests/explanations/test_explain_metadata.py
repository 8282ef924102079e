"""Explanations of metadata-fusion models: the maps are computed with the patient metadata the
prediction used (Grad-CAM, integrated gradients, the acrnn head's attention after the fusion),
"no metadata" is "nothing known", and ``derm_exp.explain metadata=<csv>`` and the service's
``explain=true`` pass each image's metadata on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from derm_exp.explanations import explain_batch, explain_image
from derm_exp.inference.predictor import SkinLesionPredictor
from tests.cli import run_module
from tests.metadata.test_metadata_checkpoints import ENCODER, write_checkpoint
from tests.metadata.test_metadata_fusion import model_for

OLD = {"age": 80, "sex": "male", "localization": "back"}
YOUNG = {"age": 10, "sex": "female", "localization": "face"}


def _encoded(*records: dict | None) -> torch.Tensor:
    return torch.from_numpy(ENCODER.encode_records(list(records)))


def _fusion_model(method: str, head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = model_for(method, head).eval()
    # Give the fusion weight: FiLM starts as the identity, and a strong metadata branch makes
    # its effect on the maps plain.
    last = [m for m in model.fusion.mlp if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(last.weight, std=1.0)
    return model


@pytest.mark.parametrize(
    ("method", "head", "explain"),
    [
        ("film", "simple", "gradcam"),
        ("film", "simple", "integrated_gradients"),
        ("concat", "acrnn", "attention"),
        ("film", "acrnn", "attention"),
    ],
)
def test_the_maps_follow_the_metadata_given(method: str, head: str, explain: str) -> None:
    model = _fusion_model(method, head)
    # 96 px: the tiny backbone's last feature map is then 3 x 3, enough for an attention map.
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    old = explain_batch(model, x, method=explain, targets=[0, 1], metadata=_encoded(OLD, OLD))
    young = explain_batch(model, x, method=explain, targets=[0, 1], metadata=_encoded(YOUNG, YOUNG))
    assert old.shape == (2, 96, 96) and old.min() >= 0.0 and old.max() <= 1.0
    assert np.abs(old - young).max() > 1e-3  # the metadata changes what the model looks at
    # No metadata is "nothing known", as in prediction.
    none = explain_batch(model, x, method=explain, targets=[0, 1])
    missing = explain_batch(model, x, method=explain, targets=[0, 1], metadata=_encoded(None, None))
    np.testing.assert_allclose(none, missing, atol=1e-6)


def test_a_metadata_batch_of_the_wrong_size_is_refused() -> None:
    from derm_exp.explanations import ExplanationError

    model = _fusion_model("concat", "simple")
    with pytest.raises(ExplanationError, match="metadata of shape"):
        explain_batch(model, torch.randn(2, 3, 32, 32), metadata=_encoded(OLD))


def _photo(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_explain_image_uses_the_metadata_the_predictor_predicts_with(tmp_path: Path) -> None:
    predictor = SkinLesionPredictor.from_checkpoint(
        write_checkpoint(tmp_path / "concat.pt", "concat"), device="cpu"
    )
    photo = _photo(tmp_path / "a.png", 0)
    with_meta = explain_image(predictor, photo, metadata=OLD)
    expected = predictor.predict(photo, metadata=OLD)["probabilities"]
    assert with_meta.probabilities == pytest.approx(expected, abs=1e-6)
    without = explain_image(predictor, photo)
    assert with_meta.probabilities != pytest.approx(without.probabilities, abs=1e-6)


def test_the_explain_cli_reads_a_metadata_csv(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "concat.pt", "concat")
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(2):
        _photo(folder / f"img{seed}.png", seed)
    pd.DataFrame(
        {
            "image_id": ["img0", "img1"],
            "age": [80, 10],
            "sex": ["male", "female"],
            "localization": ["back", "moon"],
        }  # fmt: skip
    ).to_csv(tmp_path / "meta.csv", index=False)
    proc = run_module(
        "derm_exp.explain",
        f"model={checkpoint}",
        f"image={folder}",
        f"metadata={tmp_path / 'meta.csv'}",
        f"out={tmp_path / 'maps'}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'moon' was not seen in training" in proc.stdout + proc.stderr
    assert {p.name for p in (tmp_path / "maps").iterdir()} >= {
        "img0_gradcam.png",
        "img1_gradcam.png",
        "contact_sheet.png",
    }


def test_the_training_gallery_explains_test_images_with_their_metadata(tmp_path: Path) -> None:
    import mlflow

    from derm_exp.explanations.gallery import log_explanation_gallery

    model = _fusion_model("film", "simple")
    paths = [str(_photo(tmp_path / f"t{i}.png", i)) for i in range(4)]
    labels = np.array([0, 0, 1, 1])
    probs = np.full((4, 7), 0.1)
    probs[[0, 1, 2, 3], [0, 1, 1, 0]] = 0.4  # two right, two wrong
    metadata = ENCODER.encode_records([OLD, YOUNG, None, OLD])
    settings = {"per_class": 1, "method": "gradcam", "sanity_images": 4}
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("gallery")
    with mlflow.start_run() as run:
        classes = [f"c{i}" for i in range(7)]
        metrics = log_explanation_gallery(model, paths, labels, probs, classes, settings, metadata)
    assert set(metrics) >= {"explain/randomisation_spearman", "explain/class_sensitivity_spearman"}
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "explanations")}
    assert {"explanations/gallery_c0.png", "explanations/sanity.json"} <= logged
