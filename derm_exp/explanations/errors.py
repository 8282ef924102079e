"""Errors of the explanations layer."""

from __future__ import annotations

from derm_exp.errors import UserError


class ExplanationError(UserError, ValueError):
    """An explanation cannot be made as asked: unknown method, a method that does not apply to
    the model (``attention`` on a head without attention), an unknown target class, ..."""
