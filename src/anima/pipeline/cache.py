"""The run cache: a step is skipped when a FINISHED run has the same key.

key = hash(composed config hash [the run's `anima.config_hash`], the identities of the earlier steps' runs,
the versions behind any moving model alias in the config). The earlier runs are part of the key because a
pipeline is a chain: when pretrain re-runs, sft must too, even if its own config did not change.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from anima.fingerprint import hash_obj

KEY_TAG = "anima.pipeline.key"
OUTPUTS_TAG = "anima.pipeline.outputs"
INPUTS_TAG = "anima.pipeline.inputs"
ALIAS_URI = re.compile(r"^models:/([^/@]+)@([\w.-]+)$")


def moving_aliases(config: Any) -> dict[str, str]:
    """models:/name@alias values in a resolved config -> the version they point at now (or 'missing')."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and ALIAS_URI.match(node):
            found[node] = ""

    walk(config)
    if not found:
        return {}
    from mlflow import MlflowClient

    client = MlflowClient()
    for uri in found:
        name, alias = ALIAS_URI.match(uri).groups()  # type: ignore[union-attr]
        try:
            if alias == "latest":
                versions = client.search_model_versions(f"name='{name}'")
                found[uri] = f"{name}/{max(int(v.version) for v in versions)}" if versions else "missing"
            else:
                found[uri] = f"{name}/{client.get_model_version_by_alias(name, alias).version}"
        except Exception:
            found[uri] = "missing"
    return found


def inputs_of(config_hash: str, upstream: Mapping[str, str], aliases: Mapping[str, str]) -> dict[str, Any]:
    return {"config_hash": config_hash, "upstream": dict(upstream), "aliases": dict(aliases)}


def cache_key(inputs: Mapping[str, Any]) -> str:
    return hash_obj(inputs)


def find_cached(experiment_id: str, key: str) -> Any | None:
    """The newest FINISHED run recorded with this key whose outputs still exist, else None."""
    from mlflow import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=5)
    for run in runs:
        if _outputs_exist(client, outputs_of_run(run)):
            return run
    return None


def outputs_of_run(run: Any) -> dict[str, Any]:
    try:
        return json.loads(run.data.tags.get(OUTPUTS_TAG, "{}"))
    except json.JSONDecodeError:
        return {}


def _outputs_exist(client: Any, outputs: Mapping[str, Any]) -> bool:
    """A registered version deleted since (or a model dir removed) means the run cannot stand in any more."""
    uri = str(outputs.get("model_uri") or "")
    m = re.match(r"^models:/([^/@]+)/(\d+)$", uri)
    if m:
        try:
            client.get_model_version(m.group(1), m.group(2))
        except Exception:
            return False
    return True


def record(run_id: str, key: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Mark a finished step run as a cache entry (set only after success, so failed runs never match)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, INPUTS_TAG, json.dumps(inputs, sort_keys=True)[:7999])
    client.set_tag(run_id, OUTPUTS_TAG, json.dumps(outputs, sort_keys=True, default=str)[:7999])
    client.set_tag(run_id, KEY_TAG, key)
