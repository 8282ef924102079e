"""How long MLflow waits for an HTTP tracking server (no MLflow import: Hydra's job callback
applies it before anything heavy loads).

MLflow's own defaults retry a refused connection for ~4 minutes (7 retries, 120 s timeout).
``tracking.request_timeout_s`` / ``max_retries`` / ``retry_backoff_s`` set MLflow's
``MLFLOW_HTTP_REQUEST_*`` variables, which it reads at every request; the defaults below match
conf/train.yaml and apply to every app that talks to MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from derm_exp.errors import ConfigError

HTTP_ENV = {
    "request_timeout_s": "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "max_retries": "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "retry_backoff_s": "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
}
HTTP_DEFAULTS = {"request_timeout_s": 20, "max_retries": 3, "retry_backoff_s": 2}


def apply_http_defaults() -> None:
    """Set the defaults where the user's environment does not say otherwise."""
    for key, var in HTTP_ENV.items():
        os.environ.setdefault(var, str(HTTP_DEFAULTS[key]))


def configure_http(tracking: Mapping[str, Any]) -> None:
    """Bound how long MLflow waits for an HTTP tracking server: each request times out after
    ``request_timeout_s`` and is retried ``max_retries`` times, ``retry_backoff_s`` x 2, 4, ...
    seconds apart."""
    for key, var in HTTP_ENV.items():
        value = tracking.get(key)
        if value is None:
            continue
        low = 1 if key == "request_timeout_s" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"tracking.{key}={value!r}: give a whole number >= {low}")
        os.environ[var] = str(value)
