"""Register the schemas with Hydra's ConfigStore and the `${anima_root:}` resolver."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from anima.config.stages import STAGE_SCHEMAS
from anima.paths import project_root

def register_configs() -> None:
    """Idempotent and cheap; call again after a stage module registers its schema."""
    if not OmegaConf.has_resolver("anima_root"):
        OmegaConf.register_new_resolver("anima_root", lambda: str(project_root()))
    cs = ConfigStore.instance()
    for name, schema in STAGE_SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=schema)
