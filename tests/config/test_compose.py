"""Every option of every config group composes; dotted group selection works like Hydra's."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from derm_exp.config import CONF_DIR, check_overrides, config_groups, normalize_overrides
from tests.conftest import compose_train

GROUPS = [
    "model",
    "model/head",
    "model/metadata",
    "loss",
    "augment",
    "optimizer",
    "scheduler",
    "tta",
    "data",
    "trainer",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    cfg = compose_train([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    node = OmegaConf.select(cfg, group.replace("/", "."))
    expected = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    for key in (k for k in expected if k != "defaults"):
        assert key in node


def test_dotted_group_override_selects_the_option() -> None:
    dotted = compose_train(["model.head=acrnn"])
    canonical = compose_train(["model/head=acrnn"])
    assert dotted == canonical
    assert dotted.model.head._target_.endswith("ACRNNHead")
    assert dotted.model.name == "tf_efficientnetv2_b0"


def test_normalize_leaves_values_and_sweeps_alone() -> None:
    out = normalize_overrides(
        [
            "model.head=simple,acrnn",
            "data.root=/x",
            "+tracking.tags.a=1",
            "model=tiny",
            "optimizer.lr=0.1",
        ]
    )
    assert out == [
        "model/head=simple,acrnn",
        "data.root=/x",
        "+tracking.tags.a=1",
        "model=tiny",
        "optimizer.lr=0.1",
    ]
    assert {"model", "model/head", "loss", "augment"} <= config_groups()


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(Exception, match=r"(?s)model/head/nope.*acrnn.*simple"):
        compose_train(["model.head=nope"])


def test_typo_in_key_is_rejected() -> None:
    with pytest.raises(Exception, match="max_epoch"):
        compose_train(["trainer.max_epoch=3"])


def test_experiment_demo_is_a_small_diff() -> None:
    cfg = compose_train(["experiment=demo"])
    assert cfg.model.name == "test_efficientnet"
    assert cfg.data.image_size == 64


@pytest.mark.parametrize(
    "experiment",
    [
        p.stem
        for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))
        if p.stem != "demo" and not p.stem.startswith("best_")
    ],
)
def test_every_experiment_composes(experiment: str) -> None:
    cfg = compose_train([f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_a_single_value_for_a_list_setting_becomes_a_list() -> None:
    given = [
        "benchmark.inference_amp=bf16",
        "benchmark.sections=[loader,train]",
        "benchmark.real_loader_workers=null",
        "tta.views=identity",
        "data.root=/x",
        "benchmark.repeats=3",
    ]
    checked, message = check_overrides(given, "benchmark")
    assert message is None
    assert checked == [
        "benchmark.inference_amp=[bf16]",
        "benchmark.sections=[loader,train]",
        "benchmark.real_loader_workers=null",
        "tta.views=[identity]",
        "data.root=/x",
        "benchmark.repeats=3",
    ]
    # The group the user selects decides: simple's hidden_dims is a list, so 512 becomes [512].
    checked, _ = check_overrides(["model.head.hidden_dims=512", "seed=1,2"], "train")
    assert checked == ["model.head.hidden_dims=[512]", "seed=1,2"]
    checked, _ = check_overrides(["models=models:/derm-classifier/1"], "ensemble")
    assert checked == ["models=[models:/derm-classifier/1]"]
