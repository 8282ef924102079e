"""Optuna hyperparameter search helpers used by the ``derm_optuna`` Hydra sweeper.

Plain functions of configs and optuna objects, testable without running Hydra: search-space
parsing (:mod:`.search_space`), the per-epoch pruning hook (:mod:`.pruning`), study storage and
bookkeeping (:mod:`.study`), the MLflow parent run (:mod:`.tracking`) and the reproducible
best-trial experiment file (:mod:`.best_config`).
"""
