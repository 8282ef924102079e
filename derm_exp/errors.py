"""Turn user mistakes into one clear message and exit code 1 instead of a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger("derm_exp")


class UserError(Exception):
    """Base of every "fix your input or config" error: shown as one ``error: ...`` line.

    Each layer defines its own subclasses next to the code that raises them (``ConfigError``,
    ``DataValidationError``, ``TrackingError``, ...), so this module imports nothing of derm_exp.
    """


class ConfigError(UserError, ValueError):
    """A configuration value is invalid."""


class ModelSourceError(UserError, ValueError):
    """A model reference (checkpoint path, MLflow run id, ``models:/`` URI) cannot be resolved."""


class PredictionInputError(UserError, ValueError):
    """An input to prediction is unusable: missing image, empty folder, unknown TTA mode, ..."""


class RegistryError(UserError, ValueError):
    """The model registry cannot give what was asked: no such model, no match, or members that
    cannot form one ensemble (different classes or data splits)."""


class StorageError(UserError, RuntimeError):
    """Writing run outputs failed (disk full, read-only or vanished artifact store, ...).

    The message says what failed, where the last good local checkpoint is and how to resume.
    """


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "fix your input or config", not "bug"."""
    return (UserError, FileNotFoundError)


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
