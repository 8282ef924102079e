"""Optuna hyperparameter search helpers used by the ``derm_optuna`` Hydra sweeper.

Plain functions of configs and optuna objects, testable without running Hydra: the checks run
before any trial (:mod:`.checks`), search-space parsing (:mod:`.search_space`), the per-epoch
pruning hook (:mod:`.pruning`), study storage and bookkeeping (:mod:`.study`), how a completed
trial is scored (:mod:`.scoring`), the MLflow parent run and trial runs (:mod:`.tracking`), the
reproducible best-trial experiment file (:mod:`.best_config`) and what the sweep prints
(:mod:`.summary`).
"""
