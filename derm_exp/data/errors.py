"""The data layer's user error, in a module of its own so every data module can raise it
without importing another one (images <- metadata <- dataset/cache)."""

from __future__ import annotations

from derm_exp.errors import UserError


class DataValidationError(UserError, ValueError):
    """The dataset (or a split request) is unusable; the message says what and how to fix."""
