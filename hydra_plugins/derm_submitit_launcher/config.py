"""Make ``conf/hydra/launcher/submitit_{slurm,local}.yaml`` the launcher configs.

Hydra merges a config file with a ConfigStore node of the same name (its deprecated automatic
schema matching, with a warning), and hydra-submitit-launcher stores
``hydra/launcher/submitit_slurm`` as its ``SlurmQueueConf``, which lacks ``srun_args`` (hydra
#2719): the merge would refuse the key. Its nodes are dropped, so the YAML files alone define the
options. Hydra's plugin scan re-runs every plugin module in an order set by ``sys.path``, so this
is done from a search-path plugin, which Hydra runs after the scan and before it composes any
config. Kept import-light: Hydra imports it on every start.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin

NAMES = ("submitit_slurm.yaml", "submitit_local.yaml")


def drop_released_nodes() -> None:
    """Remove hydra-submitit-launcher's ``hydra/launcher`` nodes from the ConfigStore."""
    launchers = ConfigStore.instance().repo.get("hydra", {}).get("launcher", {})
    for name in NAMES:
        node = launchers.get(name)
        if node is not None and node.provider == "submitit_launcher":
            del launchers[name]


class DermLauncherConfigs(SearchPathPlugin):
    """Not a search path change: the hook Hydra calls between its plugin scan and composing."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        drop_released_nodes()
