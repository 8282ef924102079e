"""derm_exp's submitit launchers (``hydra/launcher=submitit_slurm|submitit_local``).

Thin subclasses of hydra-submitit-launcher 1.2.0's launchers (see :mod:`.launcher`); their
configs are the YAML files in ``conf/hydra/launcher/``.
"""
