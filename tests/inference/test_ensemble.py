"""Ensemble math on fixed arrays, member compatibility, and the predictor over checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from derm_exp.errors import PredictionInputError, RegistryError
from derm_exp.inference.aggregation import aggregate, metric_weights, uncertainty
from derm_exp.inference.ensemble import EnsemblePredictor
from derm_exp.inference.members import Member, check_compatible

P1 = [0.8, 0.1, 0.1]
P2 = [0.2, 0.5, 0.3]


def _h(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p)


def test_mean_and_geometric_mean_by_hand() -> None:
    probs = np.array([[P1], [P2]])  # (M=2, N=1, C=3)
    assert aggregate(probs, "mean")[0] == pytest.approx([0.5, 0.3, 0.2])
    geo = [math.sqrt(a * b) for a, b in zip(P1, P2, strict=True)]  # 0.4, 0.2236, 0.1732
    expected = [g / sum(geo) for g in geo]
    out = aggregate(probs, "geometric_mean")[0]
    assert out == pytest.approx(expected)
    assert out.sum() == pytest.approx(1.0)
    assert out[0] == pytest.approx(0.50199, abs=1e-4)


def test_weighted_mean_uses_softmax_of_validation_metric() -> None:
    # A member one tau behind the best gets e^-1 of its weight.
    w = metric_weights([0.60, 0.55], tau=0.05)
    assert w == pytest.approx([1 / (1 + math.e**-1), math.e**-1 / (1 + math.e**-1)])
    assert w[0] == pytest.approx(0.7311, abs=1e-4)
    # losses: lower is better
    assert metric_weights([0.9, 1.0], tau=0.1, higher_is_better=False)[0] > 0.7
    probs = np.array([[P1], [P2]])
    out = aggregate(probs, "weighted_mean", w)[0]
    assert out == pytest.approx(w[0] * np.array(P1) + w[1] * np.array(P2))
    assert metric_weights([0.6, 0.55, 0.5], tau=1e6) == pytest.approx([1 / 3] * 3)
    with pytest.raises(RegistryError, match="tau"):
        metric_weights([0.5], tau=0)


def test_uncertainty_fields_by_hand() -> None:
    members = np.array([[P1, [0.1, 0.1, 0.8]], [P2, [0.2, 0.2, 0.6]]])  # (2, 2, 3)
    probs = aggregate(members, "mean")
    unc = uncertainty(members, probs)
    mean0 = [0.5, 0.3, 0.2]
    assert unc["confidence"] == pytest.approx([0.5, 0.7])
    assert unc["std"] == pytest.approx([0.3, 0.1])  # population std of (0.8, 0.2), (0.8, 0.6)
    assert unc["entropy"][0] == pytest.approx(_h(mean0))
    assert unc["mutual_information"][0] == pytest.approx(_h(mean0) - (_h(P1) + _h(P2)) / 2)
    assert unc["disagreement"] == pytest.approx([0.5, 0.0])  # member 2 says class 1 on image 0
    assert (unc["mutual_information"] >= 0).all()
    # weights change the mixture, and so the mutual information
    w = np.array([0.75, 0.25])
    weighted = uncertainty(members, aggregate(members, "weighted_mean", w), w)
    mix = 0.75 * np.array(P1) + 0.25 * np.array(P2)
    assert weighted["mutual_information"][0] == pytest.approx(
        _h(list(mix)) - 0.75 * _h(P1) - 0.25 * _h(P2)
    )


def test_unknown_aggregation_is_refused() -> None:
    with pytest.raises(PredictionInputError, match="geometric_mean"):
        aggregate(np.ones((2, 1, 3)) / 3, "median")


def _member(name: str, classes=("a", "b"), fingerprint="f1") -> Member:
    return Member(name, Path(f"{name}.pt"), list(classes), fingerprint)


def test_members_with_different_classes_or_splits_are_refused() -> None:
    check_compatible([_member("m/1"), _member("m/2")])
    with pytest.raises(RegistryError, match=r"different class lists: m/1 = a,b; m/2 = a,b,c"):
        check_compatible([_member("m/1"), _member("m/2", classes=("a", "b", "c"))])
    with pytest.raises(RegistryError, match=r"data_fingerprint.*m/1 = f1; m/3 = f2"):
        check_compatible([_member("m/1"), _member("m/3", fingerprint="f2")])
    with pytest.raises(RegistryError, match="at least one member"):
        check_compatible([])


# -- the predictor over real (untrained) checkpoints ------------------------------------------


def _checkpoint(path: Path, seed: int, fingerprint: str = "fp-demo") -> Path:
    import torch

    from derm_exp.data.metadata import CLASSES
    from derm_exp.models.checkpoint import save_checkpoint
    from derm_exp.models.classifier import build_model
    from tests.conftest import compose_train

    cfg = compose_train(["model=tiny", "data.image_size=32"])
    torch.manual_seed(seed)
    model = build_model(cfg.model, num_classes=len(CLASSES), image_size=32)
    for p in model.head.parameters():  # make members visibly different
        torch.nn.init.normal_(p, std=0.5)
    config = OmegaConf.to_container(cfg, resolve=True)
    return save_checkpoint(
        {
            "format": "derm_exp.checkpoint/1",
            "config": config,
            "classes": list(CLASSES),
            "data_config": model.data_config,
            "data_fingerprint": fingerprint,
            "run_id": None,
            "model": model.state_dict(),
            "weights": "raw",
            "epoch": 0,
            "best": {"value": 0.5 + seed / 100, "loss": 1.0, "weights": "raw", "epoch": 0},
            "temperature": 1.5,
        },
        path,
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("ens_ck")
    return [_checkpoint(root / f"m{s}.pt", s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def images(demo_data: Path) -> list[str]:
    return sorted(str(p) for p in (demo_data / "images").glob("*.jpg"))[:6]


def test_ensemble_predictor_matches_its_members(checkpoints: list[Path], images: list[str]):
    from derm_exp.inference.predictor import DISCLAIMER, SkinLesionPredictor

    ens = EnsemblePredictor.from_checkpoints(checkpoints, device="cpu")
    singles = np.stack(
        [
            SkinLesionPredictor.from_checkpoint(c, device="cpu").predict_proba(images)
            for c in checkpoints
        ]
    )
    assert ens.member_probabilities(images) == pytest.approx(singles, abs=1e-6)
    assert ens.predict_proba(images) == pytest.approx(singles.mean(0), abs=1e-6)

    results = ens.predict(images[:2])
    single_keys = set(
        SkinLesionPredictor.from_checkpoint(checkpoints[0], device="cpu").predict(images[0])
    )
    assert single_keys - {"temperature"} <= set(results[0])
    r = results[0]
    assert r["disclaimer"] == DISCLAIMER
    assert r["probabilities"][r["predicted_class"]] == pytest.approx(r["confidence"])
    assert {"std", "entropy", "mutual_information", "disagreement"} <= set(r)
    assert 0.0 <= r["disagreement"] <= 1.0

    # TTA: each member averages its views in one batch; the ensemble averages the members.
    tta = ens.predict_with_tta(images[:3], mode="light")
    per_member = np.stack(
        [
            SkinLesionPredictor.from_checkpoint(c, device="cpu").predict_batch(
                images[:3], tta="light"
            )
            for c in checkpoints
        ],
        axis=0,
    )
    manual = np.array([[list(d["probabilities"].values()) for d in row] for row in per_member])
    got = np.array([list(d["probabilities"].values()) for d in tta])
    assert got == pytest.approx(manual.mean(0), abs=1e-5)
    assert tta[0]["tta"]["views"] == ["identity", "hflip", "vflip", "rot180"]


def test_geometric_and_weighted_ensembles(checkpoints: list[Path], images: list[str]) -> None:
    geo = EnsemblePredictor.from_checkpoints(
        checkpoints, aggregation="geometric_mean", device="cpu"
    )
    members = geo.member_probabilities(images)
    assert geo.predict_proba(images) == pytest.approx(aggregate(members, "geometric_mean"))
    weighted = EnsemblePredictor.from_checkpoints(
        checkpoints, aggregation="weighted_mean", weights=[3, 1, 0], device="cpu"
    )
    assert weighted.predict_proba(images) == pytest.approx(0.75 * members[0] + 0.25 * members[1])
    # From metrics: the checkpoints' selection metric (best.value) with tau.
    from derm_exp.inference.members import member_from_checkpoint

    ms = [member_from_checkpoint(c) for c in checkpoints]
    assert [m.val_metrics["val_balanced_accuracy"] for m in ms] == pytest.approx([0.51, 0.52, 0.53])
    by_metric = EnsemblePredictor.from_members(ms, "weighted_mean", tau=0.01, device="cpu")
    assert by_metric.weights == pytest.approx(metric_weights([0.51, 0.52, 0.53], 0.01))


def test_loading_refuses_a_checkpoint_from_another_split(
    checkpoints: list[Path], tmp_path: Path
) -> None:
    other = _checkpoint(tmp_path / "other.pt", 4, fingerprint="fp-other")
    with pytest.raises(RegistryError, match=r"data_fingerprint.*fp-demo.*other\.pt = fp-other"):
        EnsemblePredictor.from_checkpoints([*checkpoints[:1], other], device="cpu")
