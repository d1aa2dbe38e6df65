"""Cleaning: Unicode NFC, control characters, whitespace, markup; empty/short turns dropped; length bounds.

Each function returns the cleaned value or a short reason string for the drop, so the manifest can say
*why* examples went away (counts per reason and source).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANKS = re.compile(r"\n{3,}")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s+[^<>]*)?/?>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_MD_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\s]*\)")
_MD_EMPH = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_MD_HEADING = re.compile(r"^#{1,6}\s+", re.M)
_ENTITY = re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{1,6}|#x[0-9a-fA-F]{1,6});")
_FENCE = re.compile(r"```.*?```", re.S)


def strip_markup(text: str) -> str:
    """Drop HTML tags/comments, decode entities, unwrap markdown links/emphasis/headings.

    Fenced code blocks are left untouched (code answers in chat data contain `<tag>`-like text)."""
    import html

    parts = []
    last = 0
    for m in _FENCE.finditer(text):
        parts.append(_strip_prose(text[last:m.start()], html))
        parts.append(m.group(0))
        last = m.end()
    parts.append(_strip_prose(text[last:], html))
    return "".join(parts)


def _strip_prose(text: str, html: Any) -> str:
    if "<" in text:
        text = _HTML_COMMENT.sub("", text)
        text = _HTML_TAG.sub("", text)
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    if "[" in text:
        text = _MD_LINK.sub(r"\1", text)
    if "*" in text or "__" in text:
        text = _MD_EMPH.sub(r"\2", text)
    if "#" in text:
        text = _MD_HEADING.sub("", text)
    return text


def clean_text(text: str, cfg: Any) -> str:
    """NFC, control characters removed, runs of spaces collapsed, lines stripped, 3+ newlines -> 2."""
    if cfg.normalize_unicode:
        text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if cfg.strip_markup:
        text = strip_markup(text)
    text = _SPACES.sub(" ", text)
    if "\n" in text:
        text = "\n".join(line.strip() for line in text.split("\n"))
        text = _BLANKS.sub("\n\n", text)
    return text.strip()


def clean_messages(messages: list[dict], cfg: Any) -> list[dict] | str:
    """Clean every turn; drop empty/too-short turns, merge same-role neighbours, end on an assistant turn.

    Returns the messages or the drop reason: "turn_too_long", "no_exchange" (no user+assistant left),
    "too_short", "too_long" (example length bounds)."""
    out: list[dict] = []
    for m in messages:
        content = clean_text(m["content"], cfg)
        if len(content) < max(1, cfg.min_turn_chars):
            continue
        if len(content) > cfg.max_turn_chars:
            return "turn_too_long"
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {"role": m["role"], "content": out[-1]["content"] + "\n" + content}
        else:
            out.append({"role": m["role"], "content": content})
    while out and out[-1]["role"] != "assistant":
        out.pop()
    if not any(m["role"] == "user" for m in out) or not out:
        return "no_exchange"
    return _length_check(sum(len(m["content"]) for m in out), cfg) or out


def clean_document(text: str, cfg: Any) -> str | tuple[str]:
    """A cleaned text record, or a 1-tuple holding the drop reason ("empty", "too_short", "too_long")."""
    text = clean_text(text, cfg)
    if not text:
        return ("empty",)
    reason = _length_check(len(text), cfg)
    return (reason,) if reason else text


def _length_check(n: int, cfg: Any) -> str | None:
    if n < cfg.min_example_chars:
        return "too_short"
    if n > cfg.max_example_chars:
        return "too_long"
    return None
