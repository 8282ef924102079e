"""derm_exp's Optuna sweeper for Hydra (``hydra/sweeper=derm_optuna``), built on Optuna 5.

hydra-optuna-sweeper caps optuna<3 and breaks this stack, hence this small plugin. Hydra finds
it in the ``hydra_plugins`` namespace package; its configs are registered in :mod:`.config`.
"""
