"""Secrets never reach the tracking store: passwords in URIs and values of secret-looking keys."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd)$", re.IGNORECASE)
URI_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)


def redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if SECRET_KEY.search(key.split(".")[-1]) and value and not value.startswith("${"):
            return "***"
        return URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)
    return value


def redact(obj: Any, prefix: str = "") -> Any:
    """Recursively redact a nested dict/list config."""
    if isinstance(obj, dict):
        return {k: redact(v, f"{prefix}{k}.") for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v, prefix) for v in obj]
    return redact_value(prefix.rstrip("."), obj)
