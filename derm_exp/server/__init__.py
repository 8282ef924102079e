"""The shared tracking server: PostgreSQL for MLflow and Optuna, and ``mlflow server`` on it.

``python -m derm_exp.server start|stop|status`` (``make server`` / ``make server-stop``). Its
state lives in one folder (default ``<project>/server``, see :mod:`derm_exp.server.layout`);
PostgreSQL runs from Debian's server binaries as an unprivileged user and MLflow serves the
artifacts itself (``--serve-artifacts``), so clients need only ``tracking.uri=http://...``.
Both listen on 127.0.0.1 unless a host is passed explicitly. No client URL carries a password:
PostgreSQL clients (MLflow's server, Optuna) read it from a 0600 ``pgpass`` file (``PGPASSFILE``).
"""
