"""`${step:<step>.<output>}`: an earlier step's output (model URI, run id, dataset, ...) in a later step's overrides.

The text stays a plain string through composition (the resolver of the same name returns it unchanged); the
runner substitutes the value right before the step runs, when the earlier step has produced it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from anima.errors import ConfigError

REF = re.compile(r"\$\{step:\s*([A-Za-z_][\w-]*)(?:\.([\w./-]+))?\s*\}")
DEFAULT_OUTPUT = "model_uri"


def find_refs(value: Any) -> list[tuple[str, str]]:
    """(step, output) pairs referenced anywhere in a nested value."""
    if isinstance(value, str):
        return [(m.group(1), m.group(2) or DEFAULT_OUTPUT) for m in REF.finditer(value)]
    if isinstance(value, Mapping):
        return [r for v in value.values() for r in find_refs(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in find_refs(v)]
    return []


def substitute(value: Any, outputs: Mapping[str, Mapping[str, Any]], where: str) -> Any:
    """Replace every reference by the referenced output; `where` names the key for the error message."""
    if isinstance(value, str):
        whole = REF.fullmatch(value.strip())
        if whole:
            return lookup(whole.group(1), whole.group(2) or DEFAULT_OUTPUT, outputs, where)
        return REF.sub(lambda m: str(lookup(m.group(1), m.group(2) or DEFAULT_OUTPUT, outputs, where)), value)
    if isinstance(value, Mapping):
        return {k: substitute(v, outputs, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, outputs, where) for v in value]
    return value


def lookup(step: str, output: str, outputs: Mapping[str, Mapping[str, Any]], where: str) -> Any:
    if step not in outputs:
        raise ConfigError(f"{where}: ${{step:{step}.{output}}} refers to step {step!r}, which has not run before "
                          f"this one (earlier steps: {', '.join(outputs) or 'none'})")
    node: Any = outputs[step]
    for part in output.split("."):
        if not isinstance(node, Mapping) or node.get(part) in (None, ""):
            have = ", ".join(sorted(k for k, v in outputs[step].items() if v not in (None, "")))
            raise ConfigError(f"{where}: step {step!r} produced no {output!r} (it has: {have})")
        node = node[part]
    return node


PLACEHOLDERS = {"model_uri": "models:/pipeline-pending/1", "run_id": "0" * 32, "dataset": "pending/0000",
                "fingerprint": "0" * 16, "model_dir": "/pipeline-pending/model"}


def placeholder_outputs(steps: list[str]) -> dict[str, dict[str, Any]]:
    """Stand-ins used to compose every step before anything runs (a typo fails in seconds, not after pretrain)."""

    class _Any(dict):
        def get(self, key, default=None):  # any output name resolves to a string stand-in
            return PLACEHOLDERS.get(key, f"pending-{key}")

        def __getitem__(self, key):
            return self.get(key)

        def __contains__(self, key):
            return True

    return {s: _Any() for s in steps}


def is_placeholder(value: object) -> bool:
    """A stand-in output (dry run, preflight): not a real model, run or path."""
    return isinstance(value, str) and ("pipeline-pending" in value or "0" * 32 in value
                                       or value.startswith(("pending-", PLACEHOLDERS["dataset"])))
