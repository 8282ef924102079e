"""Config checks that turn bad values into one clear message before any work starts."""

from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A configuration value is invalid."""


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every invalid value in ``cfg``."""
    problems = []

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
    check(
        d.on_bad_image in ("skip", "error"),
        f"data.on_bad_image={d.on_bad_image!r}: choose skip or error",
    )
    check(t.max_epochs >= 1, f"trainer.max_epochs={t.max_epochs} must be >= 1")
    check(
        t.max_time_minutes is None or t.max_time_minutes > 0,
        f"trainer.max_time_minutes={t.max_time_minutes} must be > 0 or null",
    )
    check(t.monitor_mode in ("max", "min"), f"trainer.monitor_mode={t.monitor_mode!r}: max or min")
    check(
        str(t.monitor).startswith("val/"),
        f"trainer.monitor={t.monitor!r} must be a validation metric (val/...)",
    )
    check(
        str(cfg.objective).startswith("val/"),
        f"objective={cfg.objective!r} must be a validation metric (val/...); test metrics are "
        "never optimised",
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
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
