"""Schema of `anima data export` (conf/data_export.yaml): build-or-reuse a dataset, then write it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from anima.config.data import DataConfig
from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema


@dataclass
class DataExportConfig(StageConfig):
    data: DataConfig = field(default_factory=DataConfig)
    format: str = setting("sharegpt", "Output format.", choices=["sharegpt", "alpaca", "chatml", "qa"])
    out: Optional[str] = setting(None, "Output folder (default: <data_dir>/exports/<name>-<fingerprint>-<format>).")
    splits: List[str] = setting(doc="Splits to export, one file each (train, val, test, persona_train, "
                                "persona_val).", factory=lambda: ["train", "val", "test"])
    dataset: Optional[str] = setting(None, "Export this built dataset (name or name/fingerprint) instead of "
                                     "building `data`.")


register_schema("data_export", DataExportConfig)

