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


class RegistryError(ValueError):
    """The model registry cannot give what was asked: no such model, no match, or members that
    cannot form one ensemble (different classes or data splits)."""


class StorageError(RuntimeError):
    """Writing run outputs failed (disk full, read-only or vanished artifact store, ...).

    The message says what failed, where the last good local checkpoint is and how to resume.
    """


# (module, class) of the user-error types defined outside this module.
_USER_ERRORS = (
    ("derm_exp.data.metadata", "DataValidationError"),
    ("derm_exp.models.backbone", "PretrainedWeightsError"),
    ("derm_exp.tracking.mlflow_run", "TrackingError"),
    ("derm_exp.training.checkpoint", "CheckpointError"),
    ("derm_exp.training.loop", "NonFiniteLossError"),
    ("derm_exp.training.resume", "ResumeError"),
    ("derm_exp.training.validate", "ConfigError"),
    ("derm_exp.models.backbone", "UnknownModelError"),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "fix your input or config", not "bug".

    Only those whose module is already imported: an exception of any other type cannot have
    been raised, and importing their modules (torch, timm, mlflow) just to name the types would
    make an error found before the heavy imports (a wrong data.root) wait seconds for them.
    """
    found = tuple(getattr(sys.modules[m], n) for m, n in _USER_ERRORS if m in sys.modules)
    return (
        *found,
        FileNotFoundError,
        ModelSourceError,
        PredictionInputError,
        RegistryError,
        StorageError,
    )


def user_message(exc: BaseException) -> str:
    """The text to show for a user error.

    An exception raised in a DataLoader worker is re-raised by torch with the worker's traceback
    inside its message ("Caught X in DataLoader worker process 0. Original Traceback ..."):
    only its last line, the original message, is shown.
    """
    text = str(exc)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        _, sep, message = last.partition(": ")
        text = f"{message if sep else last} (in a DataLoader worker)"
    return text


@contextlib.contextmanager
def report_user_errors() -> Iterator[None]:
    """Print ``error: ...`` and exit 1 for user errors; Ctrl-C exits 130."""
    try:
        yield
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except user_error_types() as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(1)
