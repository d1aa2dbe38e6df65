"""Quality filter: cheap heuristic rules, and an optional perplexity score under a reference model.

Heuristics (data.filter): word count bounds, symbol ratio (non-alphanumeric share of non-space characters),
letter ratio, repetition (share of word trigrams that repeat an earlier trigram of the same example).

Model score: the example's perplexity under a reference causal LM given by URI (anything
`anima.model.resolve.resolve_model` takes). Chat examples are scored as rendered by the model's own chat
template when it has one, else as "role: content" lines. Lower is better; the score is kept as the
example's `score` column (rehearsal's `top_ratio` picks the lowest).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def example_text(ex: dict) -> str:
    """The text the heuristics and scores look at: a text record's text, or a chat's turns."""
    if ex.get("text") is not None:
        return ex["text"]
    return "\n".join(m["content"] for m in ex["messages"])


def repetition_ratio(words: Sequence[str]) -> float:
    """Share of word trigrams that already occurred earlier in the same text."""
    if len(words) < 6:
        return 0.0
    grams = list(zip(words, words[1:], words[2:]))
    return 1.0 - len(set(grams)) / len(grams)


def heuristic_reason(text: str, cfg: Any) -> str | None:
    """Why the example fails a heuristic rule ("symbols", "repetition", ...) or None when it passes."""
    if not cfg.enabled:
        return None
    words = _WORD.findall(text.casefold())
    if cfg.min_words and len(words) < cfg.min_words:
        return "too_few_words"
    if cfg.max_words and len(words) > cfg.max_words:
        return "too_many_words"
    n_chars = len(text) - sum(map(str.isspace, text))  # map over str methods: C speed, no lists
    if n_chars:
        alnum = sum(map(str.isalnum, text))
        if 1 - alnum / n_chars > cfg.max_symbol_ratio:
            return "symbols"
        if cfg.min_alpha_ratio and sum(map(str.isalpha, text)) / n_chars < cfg.min_alpha_ratio:
            return "letters"
    if repetition_ratio(words) > cfg.max_repetition:
        return "repetition"
    return None


class PerplexityScorer:
    """Per-example perplexity under a reference model (batched, no gradients, CPU/GPU as available)."""

    def __init__(self, uri: str, tracking: Any = None, max_tokens: int = 256, batch: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from anima.model.resolve import resolve_model

        resolved = resolve_model(uri, tracking)
        self.uri = resolved.canonical_uri
        self.tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=torch.float32,
                                                          use_safetensors=True, local_files_only=True)
        self.model.eval()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.max_tokens = max_tokens
        self.batch = batch
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _text(self, ex: dict) -> str:
        if ex.get("text") is not None:
            return ex["text"]
        if getattr(self.tokenizer, "chat_template", None):
            try:
                return self.tokenizer.apply_chat_template(ex["messages"], tokenize=False)
            except Exception:  # noqa: BLE001 - a template that rejects a role falls back to plain lines
                pass
        return "\n".join(f"{m['role']}: {m['content']}" for m in ex["messages"])

    def score(self, examples: Sequence[dict]) -> list[float]:
        import torch

        out: list[float] = []
        for i in range(0, len(examples), self.batch):
            texts = [self._text(ex) for ex in examples[i:i + self.batch]]
            ids = [self.tokenizer(t, add_special_tokens=True)["input_ids"][: self.max_tokens] for t in texts]
            width = max(2, max(len(x) for x in ids))
            inp = torch.full((len(ids), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for j, x in enumerate(ids):
                inp[j, : len(x)] = torch.tensor(x, dtype=torch.long)
                mask[j, : len(x)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=inp.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            tgt = inp[:, 1:].to(self.device)
            nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            m = mask[:, 1:].to(self.device).float()
            per = (nll * m).sum(1) / m.sum(1).clamp(min=1)
            out.extend(float(math.exp(min(v, 50.0))) for v in per.tolist())
        return out
