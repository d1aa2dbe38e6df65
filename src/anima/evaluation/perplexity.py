"""Perplexity of a model dir on eval sets: on chat data the loss is on assistant tokens only, rendered with the
model's own chat template (the same masking training uses); on text, next-token loss over packed windows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from anima.errors import ModelError
from anima.evaluation.evalsets import EvalSet

# Counts model loads in this process: lets tests (and curious users) see that a cached ranking loads nothing.
MODEL_LOADS = 0


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    loss: float  # mean nats per scored token
    tokens: int
    # per scored unit (a conversation; a packed window for text): (summed NLL in nats, scored tokens)
    per_example: tuple[tuple[float, int], ...] = ()


def model_template(model_dir: Path, tokenizer) -> str:
    from anima.model.build import read_anima_meta

    name = read_anima_meta(model_dir).get("chat_template")
    return str(name or ("chatml" if "<|im_end|>" in tokenizer.get_vocab() else "qa"))


def load_for_eval(model_dir: Path | str):
    """(model in eval mode, tokenizer, template name, context length); raises ModelError naming the dir."""
    global MODEL_LOADS
    import torch

    from anima.model.build import load_model_dir
    from anima.tokenizer.hf import load_tokenizer

    model_dir = Path(model_dir)
    model = load_model_dir(model_dir, dtype=torch.float32)
    MODEL_LOADS += 1
    model.eval()
    tokenizer = load_tokenizer(model_dir)
    ctx = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    return model, tokenizer, model_template(model_dir, tokenizer), ctx


def _chat_batches(es: EvalSet, tokenizer, template: str, ctx: int, batch_size: int):
    from anima.train.chat_rows import encode_examples, pad_rows

    rows = encode_examples(list(es.examples), tokenizer, template, ctx, f"eval set {es.name}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for i in range(0, len(rows), batch_size):
        yield pad_rows(rows.input_ids[i:i + batch_size], rows.labels[i:i + batch_size], pad)


def _text_batches(es: EvalSet, tokenizer, ctx: int, batch_size: int):
    import torch

    ids: list[int] = []
    for ex in es.examples:  # BOS doc EOS, as the pretraining token stream
        ids.append(tokenizer.bos_token_id)
        ids.extend(tokenizer(ex["text"], add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
        if es.max_tokens and len(ids) > es.max_tokens + 1:
            break
    if es.max_tokens:
        ids = ids[: es.max_tokens + 1]
    windows = [ids[s:s + ctx + 1] for s in range(0, max(1, len(ids) - 1), ctx)]
    windows = [w for w in windows if len(w) >= 2]
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        n = max(len(w) for w in chunk) - 1
        x = torch.full((len(chunk), n), tokenizer.eos_token_id, dtype=torch.long)
        y = torch.full((len(chunk), n), -100, dtype=torch.long)
        att = torch.zeros((len(chunk), n), dtype=torch.long)
        for j, w in enumerate(chunk):
            x[j, :len(w) - 1] = torch.tensor(w[:-1])
            y[j, :len(w) - 1] = torch.tensor(w[1:])
            att[j, :len(w) - 1] = 1
        yield {"input_ids": x, "attention_mask": att, "labels": y}


def perplexity(model, tokenizer, template: str, es: EvalSet, *, ctx: int, batch_size: int = 8) -> Perplexity:
    """exp(mean cross-entropy over scored tokens); labels are already shifted (labels[t] = token t+1)."""
    import torch
    import torch.nn.functional as F

    batches = (_chat_batches(es, tokenizer, template, ctx, batch_size) if es.kind == "chat"
               else _text_batches(es, tokenizer, ctx, batch_size))
    per: list[tuple[float, int]] = []
    with torch.inference_mode():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            labels = b["labels"]
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                  ignore_index=-100, reduction="none").view(labels.shape)
            per.extend(zip(nll.sum(dim=1).tolist(), (labels != -100).sum(dim=1).tolist()))
    per = [(float(s), int(c)) for s, c in per if c > 0]
    total, count = sum(s for s, _ in per), sum(c for _, c in per)
    if count == 0:
        raise ModelError(f"eval set {es.name} has no token to score for this model (template {template})")
    loss = total / count
    return Perplexity(math.exp(loss) if loss < 700 else math.inf, loss, count, tuple(per))


def measure_model_dir(model_dir: Path | str, sets: Mapping[str, EvalSet], batch_size: int = 8
                      ) -> dict[str, Perplexity]:
    """Perplexity (with per-example NLL) of one model dir on every set (the model is loaded once)."""
    if not sets:
        return {}
    model, tokenizer, template, ctx = load_for_eval(model_dir)
    try:
        return {name: perplexity(model, tokenizer, template, es, ctx=ctx, batch_size=batch_size)
                for name, es in sets.items()}
    finally:
        del model


def score_model_dir(model_dir: Path | str, sets: Mapping[str, EvalSet], batch_size: int = 8) -> dict[str, float]:
    """Perplexity of one model dir on every set (the model is loaded once)."""
    return {name: p.ppl for name, p in measure_model_dir(model_dir, sets, batch_size).items()}
