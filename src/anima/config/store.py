"""Register the schemas with Hydra's ConfigStore, the `${anima_root:}` resolver, and the user config dir.

The user config dir (`anima.paths.user_conf_dir()`, `conf.local/` by default) goes on Hydra's search path
AHEAD of the shipped `conf/`: a user's data mixes, experiments and models live there without editing tracked
files, and a file with a shipped file's name overrides it. `hydra.searchpath` cannot do this (its entries
come after the primary config dir), so a search-path plugin puts it in front, for `hydra.main` and the
compose API alike. A missing dir is harmless (Hydra skips sources that do not exist).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from anima.config.stage_schemas import STAGE_SCHEMAS
from anima.paths import conf_dir, project_root, user_conf_dir

USER_PROVIDER = "anima-user"


class UserConfSearchPath(SearchPathPlugin):
    """Put `user_conf_dir()` just before anima's own `conf/` (and only on anima's search paths)."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        shipped = conf_dir().resolve()
        for element in search_path.get_path():
            if element.provider == "main" and _local_path(element.path) == shipped:
                search_path.prepend(USER_PROVIDER, f"file://{user_conf_dir()}",
                                    anchor=SearchPathQuery(provider="main"))
                return


def _local_path(path: str | None) -> Path | None:
    if not path or ("://" in path and not path.startswith("file://")):
        return None
    return Path(path.removeprefix("file://")).resolve()


_stored: dict[str, type] = {}  # schema name -> the class stored for it (OmegaConf.structured costs ~20 ms each)


def register_configs() -> None:
    """Idempotent and cheap; call again after a stage module registers its schema (only new or replaced
    schemas are stored again)."""
    if not OmegaConf.has_resolver("anima_root"):
        OmegaConf.register_new_resolver("anima_root", lambda: str(project_root()))
    Plugins.instance().register(UserConfSearchPath)
    cs = ConfigStore.instance()
    for name, schema in STAGE_SCHEMAS.items():
        key = f"{name}_schema"
        if _stored.get(key) is schema and f"{key}.yaml" in cs.repo:
            continue
        cs.store(name=key, node=schema)
        _stored[key] = schema
