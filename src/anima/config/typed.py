"""A composed config as its schema's dataclass: the typed view a stage hands its libraries.

Composition (Hydra + the stage's schema) already checked every key's type; converting once at the stage
boundary lets libraries read `spec.trainer.batch_size` as an int instead of re-casting `int(cfg.x)` at each use.
The stage keeps the raw DictConfig for what needs it (MLflow config logging, resume hashing, overrides).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def typed(cfg: Any, schema: type[T]) -> T:
    """`cfg` (a composed DictConfig, or any mapping of the schema's keys) as an instance of `schema`, every
    interpolation resolved. A config composed onto `schema` converts directly; anything else is merged onto
    `OmegaConf.structured(schema)` first, so missing keys take the schema's defaults and types are checked."""
    if isinstance(cfg, schema):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    if not (isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is schema):
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def plain_dict(group: Any) -> dict:
    """A config group (DictConfig, schema dataclass or mapping) as a plain, resolved dict: the same dict for
    the same values whichever form it came in, so fingerprints taken from it do not depend on the form."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(group, DictConfig):
        return OmegaConf.to_container(group, resolve=True)  # type: ignore[return-value]
    if dataclasses.is_dataclass(group) and not isinstance(group, type):
        return dataclasses.asdict(group)
    return dict(group)
