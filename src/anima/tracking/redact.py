"""Secrets never reach the record: passwords in URIs, secret query parameters, and values of secret-named keys.

One set of rules serves every place a run writes text (MLflow params, tags, config.yaml, overrides, dataset
sources, Hydra's files under experiments/, the job log), so a secret redacted in one is redacted in all.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

MASK = "***"

# A key names a secret when its last component ends like one of these (case-insensitive, `_`/`-` optional).
_SECRET_NAME = re.compile(
    r"(api[_-]?key|access[_-]?key|private[_-]?key|secret[_-]?key|auth[_-]?key|signing[_-]?key|encryption[_-]?key"
    r"|ssh[_-]?key|token|secret|password|passwd|passphrase|pwd|credentials?)$", re.IGNORECASE)
# Tokenizer special tokens are text, not credentials.
_NOT_SECRET = re.compile(r"(bos|eos|pad|unk|sep|cls|mask|start|end|stop|special)[_-]?token$", re.IGNORECASE)

# scheme://user:password@host -> scheme://user:***@host (the password may hold anything but '@' and blanks).
# Hydra's multirun escapes ':' and '=' in the overrides it records (`http\://u\:pw@h`): both forms match.
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*\\?://[^:/@\s'\"\\]*)(?P<sep>\\?:)(?P<pw>[^@\s'\"]+)@",
                           re.IGNORECASE)
# ?password=... &token=... &api_key=... &sig=... in a URL's query string.
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:[\w.-]*(?:password|passwd|pwd|token|secret|api[_-]?key|apikey|access[_-]?key)|key|sig|"
    r"signature|auth)\\?=)(?P<val>[^&#\s'\"]+)", re.IGNORECASE)
# key=value / key: value / "key": "value" pairs in free text (overrides, commands, logs, YAML/JSON snippets).
_PAIR = re.compile(
    r"(?P<key>(?<![\w.+~-])[+~]*[A-Za-z_][\w.-]*)(?P<q1>['\"]?)(?P<sep>\s*\\?[=:]\s*)"
    r"(?P<val>'[^']*'|\"[^\"]*\"|[^\s'\",;&{}\[\]()]+)")


def is_secret_key(key: str) -> bool:
    """Whether `key` (dotted, possibly an override like `+teacher.api_key`) names a key, token, secret or password."""
    last = key.strip().strip("'\"").lstrip("+~").rsplit(".", 1)[-1]
    return bool(_SECRET_NAME.search(last)) and not _NOT_SECRET.search(last)


def _mask_pair(m: re.Match) -> str:
    key, val = m["key"], m["val"]
    if not is_secret_key(key) or val.strip("'\"") in ("", MASK) or val.startswith(("${", "'${", '"${')):
        return m.group(0)
    quote = val[0] if val[:1] in ("'", '"') and len(val) > 1 and val[-1] == val[0] else ""
    return f"{key}{m['q1']}{m['sep']}{quote}{MASK}{quote}"


def redact_text(text: str) -> str:
    """`text` with URI passwords, secret query values and `secret_key=value` pairs replaced by ***."""
    if not text:
        return text
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}{m['sep']}{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
    return _PAIR.sub(_mask_pair, text)


def redact_value(key: str, value: Any) -> Any:
    """One config value: masked entirely under a secret-named key, else with any embedded secret masked."""
    if value is None or isinstance(value, bool):
        return value
    if is_secret_key(key):
        if isinstance(value, str) and (not value or value.startswith("${")):
            return value  # empty, or an interpolation that names where the secret comes from
        return MASK
    return redact_text(value) if isinstance(value, str) else value


def redact(obj: Any, prefix: str = "") -> Any:
    """Recursively redact a nested dict/list config (keys of dicts name what their values are)."""
    if isinstance(obj, dict):
        return {k: redact(v, f"{prefix}{k}.") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, prefix) for v in obj]
    return redact_value(prefix.rstrip("."), obj)


def redact_overrides(overrides: Sequence[str]) -> list[str]:
    """Hydra override strings (`key=value`), each with its secret value masked."""
    out = []
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep and is_secret_key(key) and value.strip("'\"") and not value.startswith("${"):
            out.append(f"{key}={MASK}")
        else:
            out.append(redact_text(str(o)))
    return out


class RedactingFilter(logging.Filter):
    """Logging filter (the Hydra job log's file handler uses it): every record leaves with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler's error path
            return True
        safe = redact_text(msg)
        if safe != msg:
            record.msg, record.args = safe, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
