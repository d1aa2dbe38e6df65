"""The run cache: a step is skipped when a FINISHED run has the same key.

key = hash(composed config hash [the run's `anima.config_hash`], the identities of the earlier steps' runs,
the versions behind any moving model alias in the config, the content fingerprint of every local input the
step reads [`pipeline.inputs`: data sources, feedback file, tokenizer dir, local model dirs]). The earlier runs
are part of the key because a pipeline is a chain: when pretrain re-runs, sft must too, even if its own config
did not change. The parts are stored on the run (`anima.pipeline.inputs`) so that a later invocation can say
which of them changed (`explain`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from anima.fingerprint import hash_obj
from anima.pipeline.context import NAME_TAG, STEP_TAG

KEY_TAG = "anima.pipeline.key"
OUTPUTS_TAG = "anima.pipeline.outputs"
INPUTS_TAG = "anima.pipeline.inputs"
INPUTS_ARTIFACT = "pipeline/inputs.json"
TAG_LIMIT = 7999
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


def inputs_of(config_hash: str, upstream: Mapping[str, str], aliases: Mapping[str, str],
              content: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parts of a step's key; `content` is label -> content fingerprint (`inputs.fingerprints`)."""
    return {"config_hash": config_hash, "upstream": dict(upstream), "aliases": dict(aliases),
            "content": dict(sorted((content or {}).items()))}


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
    text = json.dumps(inputs, sort_keys=True)
    if len(text) > TAG_LIMIT:  # many sources: the full record goes to an artifact, the tag points at it
        client.log_text(run_id, text, INPUTS_ARTIFACT)
        text = json.dumps({"artifact": INPUTS_ARTIFACT})
    client.set_tag(run_id, INPUTS_TAG, text)
    client.set_tag(run_id, OUTPUTS_TAG, json.dumps(outputs, sort_keys=True, default=str)[:7999])
    client.set_tag(run_id, KEY_TAG, key)


def inputs_of_run(run: Any) -> dict[str, Any] | None:
    """The key parts a finished step run was recorded with (None when it has none readable)."""
    try:
        data = json.loads(run.data.tags.get(INPUTS_TAG, ""))
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict) and data.get("artifact"):
        import mlflow

        try:
            data = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{data['artifact']}"))
        except Exception:
            return None
    return data if isinstance(data, dict) else None


def previous_run(experiment_id: str, pipeline: str, step: str) -> Any | None:
    """The newest FINISHED run of this step of this pipeline recorded as a cache entry."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{STEP_TAG}` = '{step}' and tags.`{NAME_TAG}` = '{pipeline}' and "
        f"tags.`{KEY_TAG}` LIKE '%' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def explain(prev: Any | None, inputs: Mapping[str, Any], paths: Mapping[str, str], config: Mapping[str, Any],
            steps_rerun: set[str] | None = None, ref_keys: set[str] | None = None) -> list[str]:
    """Why a step's key differs from its newest finished run's: each changed input (with its path), each
    changed config key, each earlier step that re-ran, each moved alias. Empty when nothing differs.
    `ref_keys`: keys fed by `${step:...}` (their change is told as the earlier step's, not as config)."""
    if prev is None:
        return ["no finished run of this step yet"]
    old = inputs_of_run(prev)
    if old is None:
        return [f"run {prev.info.run_id[:12]} recorded no inputs"]
    why: list[str] = []
    before, now = old.get("content") or {}, inputs.get("content") or {}
    for label in sorted(set(before) | set(now)):
        if label not in before:
            why.append(f"new input: {label} {paths.get(label, '')}".rstrip())
        elif label not in now:
            why.append(f"input no longer read: {label}")
        elif before[label] != now[label]:
            why.append(f"input changed: {label} {paths.get(label, '')}".rstrip())
    if old.get("config_hash") != inputs.get("config_hash"):
        every = changed_keys(prev, config)
        fed = ref_keys or set()
        keys = [k for k in every if not any(k.split(": ")[0] == f or k.startswith(f + ".") for f in fed)]
        if keys:
            why.append("config changed: " + ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5
                                                                   else ""))
        elif not every:
            why.append(f"config changed: hash {old.get('config_hash')} -> {inputs.get('config_hash')}")
    ups_old, ups_new = old.get("upstream") or {}, inputs.get("upstream") or {}
    for s in ups_new:
        if ups_old.get(s) != ups_new[s]:
            why.append(f"earlier step {s} re-ran" if steps_rerun is None or s in steps_rerun
                       else f"earlier step {s} is another run ({str(ups_new[s])[:12]})")
    al_old, al_new = old.get("aliases") or {}, inputs.get("aliases") or {}
    for uri in sorted(set(al_old) | set(al_new)):
        if al_old.get(uri) != al_new.get(uri):
            why.append(f"{uri} moved: {al_old.get(uri, 'unused')} -> {al_new.get(uri, 'unused')}")
    return why


def changed_keys(prev: Any, config: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` for config keys whose value differs from the run's logged params (secrets redacted)."""
    from anima.pipeline.refs import is_placeholder
    from anima.tracking.redact import redact
    from anima.tracking.run import NON_SEMANTIC_KEYS, flatten

    params = prev.data.params
    out = []
    for k, v in flatten(redact(dict(config))).items():
        if k.split(".")[0] in NON_SEMANTIC_KEYS:
            continue
        new = str(v)[:500]
        if params.get(k) != new and not is_placeholder(new):
            out.append(f"{k}: {params.get(k, 'unset')} -> {new}")
    return out
