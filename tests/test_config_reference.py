"""docs/CONFIG.md is generated from the schemas: every key of every stage schema, with type, default and doc."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_key_of_every_schema_is_documented():
    from anima.config.reference import load_all_schemas, render, rows

    text = render()
    schemas = load_all_schemas()
    for name in ("pretrain", "sft", "distill", "tokenizer", "pipeline", "sweep", "status", "data"):
        assert name in schemas
        assert f"### `anima {name}`" in text
    for name, schema in schemas.items():
        for key, type_, default, range_, doc in rows(schema):
            assert f"`{key.split('.')[-1]}`" in text or key in text, (name, key)
            field_doc = doc.replace("|", "\\|")
            assert field_doc in text, (name, key)
    assert "| `optim.lr` | float | `0.0009` | > 0 | Peak learning rate. |" in text
    assert "`model.arch` | str | `llama` | llama / hf |" in text
    assert "`<step>`" in text  # the pipeline's per-step keys


def test_every_setting_has_a_doc():
    from anima.config.reference import load_all_schemas, rows

    missing = [(n, k) for n, s in load_all_schemas().items() for k, _, _, _, doc in rows(s) if not doc.strip()]
    assert not missing, f"keys without a doc: {missing[:10]}"


def test_config_md_is_up_to_date():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_config_reference.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_types_render_readably():
    from typing import Any, Dict, List, Optional

    from anima.config.reference import type_name

    assert type_name(Optional[int]) == "int | null"
    assert type_name(List[str]) == "list[str]"
    assert type_name(Dict[str, Any]) == "dict[str, any]"
    assert dataclasses.is_dataclass(__import__("anima.config.groups", fromlist=["ModelConfig"]).ModelConfig)
