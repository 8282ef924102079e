"""Config checks that turn bad values into one clear message before any work starts.

:func:`validate_config` is torch-free (``python -m derm_exp.train`` runs it before torch loads)
and covers every setting a run reads, including those first used after the last epoch (TTA
views and aggregation, bootstrap resamples, the registered model name).
:func:`validate_model` checks what needs the built model.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

from omegaconf import DictConfig, OmegaConf

from derm_exp.config import AMP_MODES, as_list
from derm_exp.errors import ConfigError
from derm_exp.evaluation.subgroup_report import subgroup_settings
from derm_exp.inference.aggregation import VIEW_AGGREGATIONS
from derm_exp.inference.view_names import SQUARE_ONLY_VIEWS, VIEW_NAMES
from derm_exp.training.logit_adjustment import adjustment_problems

__all__ = ["AMP_MODES", "ConfigError", "validate_config", "validate_model"]


# Keys whose values must be numbers: (key, integer?, may be null?). Checked first, so the value
# checks below never meet a string (``data.image_size=abc`` must not end in a TypeError).
_NUMBERS: tuple[tuple[str, bool, bool], ...] = (
    ("seed", True, False),
    ("optimizer.lr", False, False),
    ("data.batch_size", True, False),
    ("data.eval_batch_size", True, False),
    ("data.num_workers", True, False),
    ("data.val_fraction", False, False),
    ("data.test_fraction", False, False),
    ("data.split_seed", True, False),
    ("data.image_size", True, True),
    ("trainer.max_epochs", True, False),
    ("trainer.max_time_minutes", False, True),
    ("trainer.freeze_backbone_epochs", True, False),
    ("trainer.finetune_lr", False, True),
    ("trainer.early_stopping_patience", True, False),
    ("trainer.log_every_n_steps", True, False),
    ("trainer.grad_clip_norm", False, True),
    ("trainer.ema.decay", False, False),
    ("trainer.ddp_timeout_s", False, True),
    ("trainer.accumulate_grad_batches", True, True),  # absent from older checkpoints' configs
    ("evaluation.n_boot", True, False),
)
_CHOICES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("data.on_bad_image", ("skip", "error")),
    ("data.sampler", ("none", "weighted")),
    ("loss.class_weights", (None, "inverse_frequency")),
    ("trainer.amp", AMP_MODES),
    ("trainer.monitor_mode", ("max", "min")),
    ("tta.aggregation", VIEW_AGGREGATIONS),
)
# Switches: true or false (absent from older checkpoints' configs: false).
_SWITCHES = ("trainer.fit_schedule_to_budget",)


def _type_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for key, integer, nullable in _NUMBERS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            if not nullable:
                problems.append(f"{key} is null or missing; it needs a number")
            continue
        kind = Integral if integer else Real
        if isinstance(value, bool) or not isinstance(value, kind):
            what = "an integer" if integer else "a number"
            problems.append(f"{key}={value!r} must be {what}" + (" or null" if nullable else ""))
    for key, choices in _CHOICES:
        value = OmegaConf.select(cfg, key, default=None)
        if value not in choices:
            shown = ", ".join("null" if c is None else str(c) for c in choices)
            problems.append(f"{key}={value!r}: choose one of {shown}")
    for key in _SWITCHES:
        value = OmegaConf.select(cfg, key, default=False)
        if not isinstance(value, bool):
            problems.append(f"{key}={value!r} must be true or false")
    return problems


def validation_metric_names() -> list[str]:
    """Names ``trainer.monitor`` and ``objective`` may take (``val/<metric>``)."""
    from derm_exp.evaluation.metrics import SCALAR_KEYS

    return [f"val/{k}" for k in (*SCALAR_KEYS, "loss")]


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every invalid value in ``cfg``."""
    problems = _type_problems(cfg)
    if problems:  # the value checks below assume numbers
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    d, t = cfg.data, cfg.trainer
    check(cfg.optimizer.lr > 0, f"optimizer.lr={cfg.optimizer.lr} must be > 0")
    check(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be >= 1")
    check(d.eval_batch_size >= 1, f"data.eval_batch_size={d.eval_batch_size} must be >= 1")
    check(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    check(
        0 < d.val_fraction < 1 and 0 < d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
        f"data.val_fraction={d.val_fraction} and data.test_fraction={d.test_fraction} must be "
        "in (0, 1) with a sum < 1",
    )
    check(
        d.image_size is None or d.image_size >= 32,
        f"data.image_size={d.image_size}: must be >= 32 pixels (or null for the model default)",
    )
    check(t.max_epochs >= 1, f"trainer.max_epochs={t.max_epochs} must be >= 1")
    check(
        t.max_time_minutes is None or t.max_time_minutes > 0,
        f"trainer.max_time_minutes={t.max_time_minutes} must be > 0 or null",
    )
    check(
        t.finetune_lr is None or t.finetune_lr > 0,
        f"trainer.finetune_lr={t.finetune_lr} must be > 0 or null",
    )
    check(t.log_every_n_steps >= 1, f"trainer.log_every_n_steps={t.log_every_n_steps} must be >= 1")
    check(
        t.early_stopping_patience >= 1,
        f"trainer.early_stopping_patience={t.early_stopping_patience} must be >= 1",
    )
    metrics = validation_metric_names()
    check(
        t.monitor in metrics,
        f"trainer.monitor={t.monitor!r} must be a validation metric: {', '.join(metrics)}",
    )
    check(
        cfg.objective in metrics,
        f"objective={cfg.objective!r} must be a validation metric ({', '.join(metrics)}); test "
        "metrics are never optimised",
    )
    check(
        0 <= t.freeze_backbone_epochs < t.max_epochs or t.freeze_backbone_epochs == 0,
        f"trainer.freeze_backbone_epochs={t.freeze_backbone_epochs} must be < max_epochs",
    )
    check(not t.ema.enabled or 0 < t.ema.decay < 1, f"trainer.ema.decay={t.ema.decay}: in (0, 1)")
    check(
        t.grad_clip_norm is None or t.grad_clip_norm > 0,
        f"trainer.grad_clip_norm={t.grad_clip_norm} must be > 0 or null",
    )
    check(
        t.get("ddp_timeout_s") is None or t.ddp_timeout_s > 0,
        f"trainer.ddp_timeout_s={t.get('ddp_timeout_s')} must be > 0 seconds",
    )
    accumulate = t.get("accumulate_grad_batches")
    check(
        accumulate is None or accumulate >= 1,
        f"trainer.accumulate_grad_batches={accumulate} must be an integer >= 1",
    )
    check(cfg.evaluation.n_boot >= 0, f"evaluation.n_boot={cfg.evaluation.n_boot} must be >= 0")
    problems += _end_of_run_problems(cfg)
    problems += _abstain_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def _end_of_run_problems(cfg: DictConfig) -> list[str]:
    """Settings first read after the last epoch: the test-time views, the registered name."""
    problems = []
    views = as_list(OmegaConf.select(cfg, "tta.views", default=None))
    unknown = [str(v) for v in views if v not in VIEW_NAMES]
    if not views or unknown:
        what = f"unknown view(s) {', '.join(unknown)}" if unknown else "no view"
        problems.append(f"tta.views: {what}; choose from {', '.join(VIEW_NAMES)}")
    name = OmegaConf.select(cfg, "registry.name", default=None)
    if OmegaConf.select(cfg, "registry.enabled", default=False) and (
        not isinstance(name, str) or not name.strip() or any(c in name for c in "/:")
    ):
        problems.append(f"registry.name={name!r}: a non-empty name without '/' or ':'")
    try:
        subgroup_settings(OmegaConf.select(cfg, "evaluation.subgroups", default=None))
    except ConfigError as exc:
        problems.append(f"evaluation.{exc}")
    return problems + adjustment_problems(cfg)


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _abstain_problems(cfg: DictConfig) -> list[str]:
    """``abstain.*`` (fitted after the last epoch) and ``evaluation.selective_coverages``;
    configs of runs started before these keys existed have none: nothing to check."""
    problems = []
    coverage = OmegaConf.select(cfg, "abstain.coverage", default=None)
    risk = OmegaConf.select(cfg, "abstain.risk", default=None)
    if coverage is not None and risk is not None:
        problems.append(
            f"abstain.coverage={coverage} and abstain.risk={risk}: give one target, the other "
            "null (e.g. abstain.risk=0.2 abstain.coverage=null)"
        )
    if coverage is not None and not (_number(coverage) and 0 < coverage <= 1):
        problems.append(f"abstain.coverage={coverage!r}: a number in (0, 1] or null")
    if risk is not None and not (_number(risk) and 0 <= risk < 1):
        problems.append(f"abstain.risk={risk!r}: a number in [0, 1) or null")
    limits = {"abstain.max_view_std": OmegaConf.select(cfg, "abstain.max_view_std", default=None)}
    quality = OmegaConf.select(cfg, "abstain.quality", default=None) or {}
    limits.update({f"abstain.quality.{k}": v for k, v in quality.items()})
    for key, value in limits.items():
        if value is not None and not (_number(value) and value >= 0):
            problems.append(f"{key}={value!r}: a number >= 0 or null")
    coverages = OmegaConf.select(cfg, "evaluation.selective_coverages", default=None)
    if coverages is not None and (
        not as_list(coverages) or not all(_number(c) and 0 < c <= 1 for c in as_list(coverages))
    ):
        problems.append(
            f"evaluation.selective_coverages={coverages!r}: a list of numbers in (0, 1]"
        )
    return problems


def _feature_reduction(backbone: Any) -> int | None:
    """Total downsampling of a timm backbone's last feature map (None when unknown)."""
    info = getattr(backbone, "feature_info", None)
    try:
        return int(info[-1]["reduction"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def validate_model(cfg: DictConfig, model: Any) -> None:
    """Check that the built model accepts the configured image size and augmentation.

    Raises :class:`ConfigError` when ``data.image_size`` is smaller than the backbone's total
    downsampling, when the model refuses the input size (a dry forward pass of one image in eval
    mode, no gradients; e.g. ViTs with a fixed size), or when the transforms cannot be built
    (``rot90`` or a centre crop with a non-square input, out-of-range augment values).
    """
    import torch

    from derm_exp.data.transforms import build_eval_transform, build_train_transform

    data_config = model.data_config
    _, height, width = data_config["input_size"]
    name = cfg.model.name
    problems = []
    reduction = _feature_reduction(getattr(model, "backbone", model))
    if reduction is not None and min(height, width) < reduction:
        problems.append(
            f"data.image_size={cfg.data.image_size} is smaller than the total downsampling of "
            f"model.name={name} ({reduction} px): use data.image_size >= {reduction}, or null for "
            "the model's default size"
        )
    square_only = sorted(SQUARE_ONLY_VIEWS & set(as_list(cfg.tta.views)))
    if square_only and height != width:
        problems.append(
            f"tta.views {', '.join(square_only)} need square images; the model's input is "
            f"{height}x{width}: set data.image_size or drop those views (e.g. tta=light)"
        )
    builders = (
        lambda: build_eval_transform(data_config),
        lambda: build_train_transform(cfg.augment, data_config),
    )
    for build in builders:
        try:
            build()
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    if not problems:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, height, width))
        except (RuntimeError, ValueError, AssertionError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(
                f"model.name={name} does not accept {height}x{width} images ({first}); choose "
                "another data.image_size, or null for the model's default size"
            )
        finally:
            model.train(was_training)
    if problems:
        raise ConfigError("invalid configuration for this model:\n  - " + "\n  - ".join(problems))
