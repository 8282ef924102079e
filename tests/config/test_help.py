"""``--help`` pages and group selection per app: each lists (and accepts) only its own groups."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from derm_exp.config import CONF_DIR, PROJECT_ROOT, group_options

TRAINING = {
    "augment",
    "data",
    "loss",
    "model",
    "model/head",
    "model/metadata",
    "optimizer",
    "scheduler",
    "trainer",
    "tta",
}
APP_GROUPS = {
    "train": TRAINING | {"experiment", "hparams_search"},
    "benchmark": TRAINING,
    "evaluate": {"tta"},
    "predict": {"tta"},
    "ensemble": {"tta"},
    "prepare_data": {"data"},
}
HEAVY = {"torch", "timm", "mlflow", "pandas"}


def run_app(app: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -X importtime -m derm_exp.<app> ...``; stderr also lists every imported module."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"derm_exp.{app}", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def imported(proc: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level packages imported by the process (from ``-X importtime``)."""
    names = re.findall(r"^import time:.*\|\s*([\w.]+)$", proc.stderr, re.M)
    return {n.strip().split(".")[0] for n in names}


def messages(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the ``-X importtime`` lines."""
    return [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]


def listed_groups(help_text: str) -> dict[str, list[str]]:
    section = help_text.split("== Config groups (group=option) ==")[1].split("== Default")[0]
    pairs = (line.split(": ", 1) for line in section.strip().splitlines())
    return {group: options.split(", ") for group, options in pairs}


@pytest.mark.parametrize("app", sorted(APP_GROUPS))
def test_help_lists_only_the_groups_the_app_composes(app: str) -> None:
    proc = run_app(app, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    groups = listed_groups(proc.stdout)
    assert set(groups) == APP_GROUPS[app]
    for group, options in groups.items():
        assert options == group_options(group), group
    assert f"derm_exp.{app}" in proc.stdout and "Usage: python -m" in proc.stdout
    assert not HEAVY & imported(proc), "--help must not import torch, timm, mlflow or pandas"


def test_prepare_data_help_is_its_own_page() -> None:
    proc = run_app("prepare_data", "--help")
    assert proc.returncode == 0
    assert "Powered by Hydra" not in proc.stdout  # Hydra's stock page
    for text in ("data.root=data/HAM10000", "check_images=false", "splits_out=", "Exit status 1"):
        assert text in proc.stdout, text


@pytest.mark.parametrize(
    ("app", "args", "group"),
    [
        ("evaluate", ["model=x", "augment=heavy"], "augment"),
        ("predict", ["model=x", "image=y", "loss=focal"], "loss"),
        ("ensemble", ["+optimizer=sgd"], "optimizer"),
        ("prepare_data", ["model=tiny"], "model"),
        ("evaluate", ["model=x", "model.head=acrnn"], "model.head"),
        ("benchmark", ["experiment=demo"], "experiment"),
    ],
)
def test_a_training_group_on_another_app_is_one_clear_line(
    app: str, args: list[str], group: str
) -> None:
    proc = run_app(app, *args)
    assert proc.returncode == 2
    (line,) = messages(proc)
    assert line.startswith(f"error: {group} is a training setting; {app} ")
    if app in ("evaluate", "predict"):
        assert f"{app} uses the checkpoint's own config" in line
    assert "+augment" not in line and "Traceback" not in proc.stderr
    assert not {"torch", "timm", "mlflow"} & imported(proc)


def test_the_groups_an_app_composes_still_work() -> None:
    proc = run_app("evaluate", "tta=medium", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "- rot270" in proc.stdout
    proc = run_app("evaluate", "tta=nope")
    assert proc.returncode == 2 and "Valid options: full, light, medium, none" in proc.stderr


def help_texts() -> dict[str, str]:
    texts = {f"{app} --help": run_app(app, "--help").stdout for app in APP_GROUPS}
    texts["README.md"] = (PROJECT_ROOT / "README.md").read_text()
    return texts


def test_examples_use_aliases_and_paths_that_exist() -> None:
    registered = re.compile(r"models:/derm-classifier(?P<ref>[@/][\w<>-]+)")
    for where, text in help_texts().items():
        for ref in registered.findall(text):
            # Training sets the alias seed-<seed>; /latest and /<version> always resolve.
            assert re.fullmatch(r"@seed-(\d+|<n>)|/(\d+|latest)", ref), (where, ref)
        assert "@champion" not in text and "../shared" not in text, where


def test_scheduler_name_is_its_option() -> None:
    for option in group_options("scheduler"):
        assert OmegaConf.load(CONF_DIR / "scheduler" / f"{option}.yaml").name == option
    proc = run_app("train", "--help")
    assert "scheduler:\n  name: cosine_warmup\n" in proc.stdout


def test_checkpoints_from_before_the_rename_still_build_their_scheduler() -> None:
    import torch
    from timm.scheduler import CosineLRScheduler

    from derm_exp.training.schedulers import build_scheduler

    cfg = OmegaConf.load(CONF_DIR / "scheduler" / "cosine_warmup.yaml")
    cfg.name = "cosine_restarts"  # what runs made before the rename stored
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert isinstance(build_scheduler(cfg, optimizer, 2, 3).impl, CosineLRScheduler)


def test_readme_group_table_lists_every_option() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme.split("| group | options | what |", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `([\w/]+)` \| ([^|]*) \|", table, re.M))
    assert set(rows) == APP_GROUPS["train"]
    for group, cell in rows.items():
        listed = set(re.findall(r"`([\w<>]+)`", cell))
        options = {o for o in group_options(group) if not o.startswith("best_")}
        assert options <= listed, (group, options - listed)
