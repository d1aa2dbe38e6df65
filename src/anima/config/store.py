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


def register_configs(config_name: str | None = None) -> None:
    """Store `<config_name>_schema` (every registered schema when None) with Hydra's ConfigStore. Idempotent;
    a schema already stored is not stored again.

    Only the schema being composed: Hydra deep-copies the whole store for every config group it reads, so
    each stored schema costs every composition (`anima sweep --help`, which reads every group option, took
    2.2 s with all of them stored and 0.6 s with its own alone, on a 2-core Xeon)."""
    if not OmegaConf.has_resolver("anima_root"):
        OmegaConf.register_new_resolver("anima_root", lambda: str(project_root()))
    Plugins.instance().register(UserConfSearchPath)
    cs = ConfigStore.instance()
    names = STAGE_SCHEMAS.keys() if config_name is None else STAGE_SCHEMAS.keys() & {config_name}
    for name in names:
        key, schema = f"{name}_schema", STAGE_SCHEMAS[name]
        if _stored.get(key) is schema and f"{key}.yaml" in cs.repo:
            continue
        cs.store(name=key, node=schema)
        _stored[key] = schema
