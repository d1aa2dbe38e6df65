"""Register the schemas with Hydra's ConfigStore and the `${anima_root:}` resolver."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from anima.config.stages import STAGE_SCHEMAS
from anima.paths import project_root

_done = False


def register_configs() -> None:
    """Idempotent: each primary config lists `<stage>_schema` first in its defaults."""
    global _done
    if _done:
        return
    if not OmegaConf.has_resolver("anima_root"):
        OmegaConf.register_new_resolver("anima_root", lambda: str(project_root()))
    cs = ConfigStore.instance()
    for name, schema in STAGE_SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=schema)
    _done = True
