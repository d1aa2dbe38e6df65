"""Incremental detokenization and stop-string holding for streamed replies.

SentencePiece byte-fallback tokens can split one UTF-8 character over several tokens, and the
decoder strips one leading space of whatever it decodes. So a token's text is only known in context:
we decode a short window twice (with and without the newest tokens) and emit the difference (the
scheme vLLM and TGI use). One more rule makes it exact: the ByteFallback decoder judges a whole run
of consecutive byte tokens at once (an invalid run turns *every* byte into U+FFFD, even bytes that
formed a valid character on their own), and skipped special tokens do not break a run. So nothing is
emitted while the newest token is a byte or special token; the run is final once an ordinary token
follows it. Concatenated deltas then always equal the decode of all generated ids, and no delta ends
in half a character.
"""

from __future__ import annotations

from typing import Callable

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

    def __init__(self, decode: Callable[[list[int]], str], hold_ids: frozenset[int] = frozenset()):
        self.decode = decode
        self.hold_ids = hold_ids
        self.ids: list[int] = []
        self.prefix = 0  # window start: tokens before it are fully emitted and never re-decoded
        self.read = 0  # tokens before it have been emitted
        self.emitted = ""

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
