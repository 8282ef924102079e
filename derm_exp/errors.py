"""Turn user mistakes into one clear message and exit code 1 instead of a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger("derm_exp")


class ModelSourceError(ValueError):
    """A model reference (checkpoint path, MLflow run id, ``models:/`` URI) cannot be resolved."""


class PredictionInputError(ValueError):
    """An input to prediction is unusable: missing image, empty folder, unknown TTA mode, ..."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "fix your input or config", not "bug"."""
    from derm_exp.data.metadata import DataValidationError
    from derm_exp.models.backbone import PretrainedWeightsError, UnknownModelError
    from derm_exp.tracking.mlflow_run import TrackingError
    from derm_exp.training.checkpoint import CheckpointError
    from derm_exp.training.loop import NonFiniteLossError
    from derm_exp.training.resume import ResumeError
    from derm_exp.training.validate import ConfigError

    return (
        DataValidationError,
        PretrainedWeightsError,
        TrackingError,
        CheckpointError,
        NonFiniteLossError,
        ResumeError,
        ConfigError,
        UnknownModelError,
        FileNotFoundError,
        ModelSourceError,
        PredictionInputError,
    )


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    """Print ``error: ...`` and exit 1 for user errors; Ctrl-C exits 130."""
    try:
        yield
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
