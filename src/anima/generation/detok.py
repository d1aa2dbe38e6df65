"""Incremental detokenization and stop-string holding for streamed replies.

SentencePiece byte-fallback tokens can split one UTF-8 character over several tokens, and the
decoder strips one leading space of whatever it decodes. So a token's text is only known in context:
we decode a short window twice (with and without the newest tokens) and emit the difference (the
scheme vLLM and TGI use). One more rule makes it exact: the ByteFallback decoder judges a whole run
of consecutive byte tokens at once (an invalid run turns *every* byte into U+FFFD, even bytes that
formed a valid character on their own), and skipped special tokens do not break a run. So nothing is
emitted while the newest token is a byte or special token; the run is final once an ordinary token
follows it. Concatenated deltas then always equal the decode of all generated ids, and no delta ends
in half a character. A raw completion starts from a few prompt tokens as context, so that what it emits is
exactly the text after the prompt's (the first word keeps its space: "a time" + " of", not "timeof").
"""

from __future__ import annotations

from typing import Callable, Sequence

REPLACEMENT = "\ufffd"


def make_decoder(tokenizer) -> Callable[[list[int]], str]:
    """ids -> text, skipping special tokens; calls the Rust tokenizer directly when that is exact."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def hold_token_ids(tokenizer) -> frozenset[int]:
    """Ids after which decoded text is not final yet: byte-fallback pieces (<0xNN>) and special tokens."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for piece, i in tokenizer.get_vocab().items():
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            ids.add(i)
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return frozenset(ids)


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back the text that became final."""

    def __init__(self, decode: Callable[[list[int]], str], hold_ids: frozenset[int] = frozenset(),
                 context: Sequence[int] = ()):
        """``context``: ids before the first pushed one (the end of the prompt), decoded but never emitted."""
        self.decode = decode
        self.hold_ids = hold_ids
        self.ids: list[int] = list(context)
        self.prefix = 0  # window start: tokens before it are fully emitted and never re-decoded
        self.read = len(self.ids)  # tokens before it have been emitted
        self.emitted = decode(self.ids) if self.ids else ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if token_id in self.hold_ids:
            return ""
        return self._step(final=False)

    def flush(self) -> str:
        """Whatever is left, even an incomplete byte sequence (the reply ended there)."""
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        prefix_text = self.decode(self.ids[self.prefix : self.read]) if self.read > self.prefix else ""
        new_text = self.decode(self.ids[self.prefix :])
        if not final and (new_text.endswith(REPLACEMENT) or len(new_text) <= len(prefix_text)):
            return ""
        if new_text.startswith(prefix_text):
            delta = new_text[len(prefix_text) :]
        else:
            # The window decoded differently in context (unusual decoders): fall back to diffing the
            # decode of everything against what was already emitted.
            full = self.decode(self.ids)
            if not full.startswith(self.emitted) or (not final and full.endswith(REPLACEMENT)):
                return ""
            delta = full[len(self.emitted) :]
        self.prefix, self.read = self.read, len(self.ids)
        self.emitted += delta
        return delta


class TokenTexts:
    """Each token id's own text and UTF-8 bytes as it reads inside a text (cached), for log-probabilities.

    Decoding one id alone would lose a word's leading space, so an id is decoded after a fixed anchor token
    and the anchor's text is cut off. A byte-fallback piece (<0xNN>) is its byte (the text shows an incomplete
    UTF-8 byte as ``\\xNN``); a special token is its own piece (e.g. ``<|im_end|>``).
    """

    def __init__(self, tokenizer, decode: Callable[[list[int]], str]):
        self.tokenizer = tokenizer
        self.decode = decode
        self.special = frozenset(getattr(tokenizer, "all_special_ids", []) or [])
        self.anchor = list(tokenizer.encode("a", add_special_tokens=False))[-1:]
        self.anchor_text = decode(self.anchor) if self.anchor else ""
        self._cache: dict[int, tuple[str, bytes]] = {}

    def _compute(self, token_id: int) -> tuple[str, bytes]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            raw = bytes([int(piece[3:5], 16)])
            return raw.decode("utf-8", errors="backslashreplace"), raw
        if token_id in self.special and isinstance(piece, str):
            return piece, piece.encode("utf-8")
        text = self.decode(self.anchor + [token_id])
        text = text[len(self.anchor_text):] if text.startswith(self.anchor_text) else self.decode([token_id])
        return text, text.encode("utf-8")

    def _get(self, token_id: int) -> tuple[str, bytes]:
        got = self._cache.get(token_id)
        if got is None:
            got = self._cache[token_id] = self._compute(token_id)
        return got

    def text(self, token_id: int) -> str:
        return self._get(token_id)[0]

    def bytes(self, token_id: int) -> bytes:
        return self._get(token_id)[1]


class StopHolder:
    """Holds back text that might be the start of a stop string; reports the first stop found."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = -1
        for s in self.stops:
            i = self.pending.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
