"""ChatEngine: load a model dir once, answer chat/completion requests as streams of text deltas.

One engine owns one model and a KV cache with ``max_batch`` slots. Concurrent requests are decoded together
by one scheduler thread (batch.py: one forward per step over every active request; each keeps its own
sampling, seed, stop strings and stream). A slot's cache is reused for the longest shared token prefix, so a
multi-turn chat only prefills the new turn.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

from anima.errors import AnimaError, ConfigError, ModelError
from anima.generation.detok import TokenTexts, hold_token_ids, make_decoder
from anima.generation.results import Completion, TextStream, TokenLogprob, collect
from anima.generation.sampling import SamplingParams, token_logprobs
from anima.generation.sequence import CONTINUATION_CONTEXT
from anima.generation.threads import ThreadTuner

BACKENDS = ("auto", "compiled", "fast", "hf")
BUILDS = ("never", "background", "wait")
#: Sequences decoded together by default (``configure_batching`` changes it; the server sets serve.limits').
DEFAULT_MAX_BATCH = 8

__all__ = ["BACKENDS", "BUILDS", "CONTINUATION_CONTEXT", "ChatEngine", "Completion", "TextStream", "TokenLogprob"]


def _read_anima_json(model_dir: Path) -> dict:
    path = model_dir / "anima.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


class ChatEngine:
    """Loads a model dir once and answers chat/completion requests, streaming text deltas."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, backend: str = "auto",
                 cache_dir: str | Path | None = None, build: str = "never"):
        """``backend``: auto = the compiled step when its package is in ``cache_dir`` (see compiled.py), else
        the eager fast step, else transformers; compiled = the compiled step, built now if missing.
        ``build`` (auto only): background = build a missing package in a child process and switch to it
        between requests once it is ready; never = use it only if it is already there."""
        import torch
        from transformers import AutoTokenizer

        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        if build not in BUILDS:
            raise ConfigError(f"build={build!r}: expected one of {', '.join(BUILDS)}")
        model_dir = Path(model_dir).expanduser()
        if not (model_dir / "config.json").is_file():
            raise ModelError(f"{model_dir}: not a model directory (no config.json)")
        self.threads: int = int(threads) if threads else torch.get_num_threads()
        meta = _read_anima_json(model_dir)
        self.model_dir = model_dir
        self.name: str = str(meta.get("name") or model_dir.name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"{model_dir}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
        vocab = self.tokenizer.get_vocab()
        default_template = "chatml" if "<|im_end|>" in vocab else "qa"
        self.template_name: str = str(meta.get("chat_template") or default_template)
        if cache_dir is None:
            from anima.paths import project_root

            cache_dir = project_root() / "data" / "cache"
        self.max_batch = DEFAULT_MAX_BATCH
        self.request_timeout_s: float | None = None
        from anima.generation.batch import BatchScheduler  # torch-heavy: imported with the model

        self.scheduler = BatchScheduler(self)
        # The model loads on the scheduler's thread, which runs every later step too (see batch.py: one
        # OpenMP pool per process, or the 2-thread step slows down 2.4x).
        self.scheduler.call(lambda: self._load(backend, Path(cache_dir), build))
        self.stop_ids = self._stop_token_ids(vocab)
        # Decode steps pick 1 or `threads` intra-op threads by timing (see threads.py).
        self.tuner = ThreadTuner(self.threads) if self.backend.name != "hf" else None
        self._tuned_for = self.backend.name
        # The Rust tokenizer is shared by prompt rendering (outside the model lock, so a request that
        # is too long fails before it queues) and streaming decode: guard it with its own small lock.
        self._tok_lock = threading.Lock()
        decode = make_decoder(self.tokenizer)

        def locked_decode(ids: list[int]) -> str:
            with self._tok_lock:
                return decode(ids)

        self._decode = locked_decode
        self._hold_ids = hold_token_ids(self.tokenizer)
        self.token_texts = TokenTexts(self.tokenizer, locked_decode)  # id -> text/bytes, for log-probabilities
        self.last_usage: tuple[int, int, str] | None = None

    def _load(self, backend: str, cache_dir: Path, build: str) -> None:
        """The weights and the decode backend (on the scheduler's thread)."""
        import torch

        from anima.model.build import load_model_dir

        torch.set_num_threads(self.threads)
        model = load_model_dir(self.model_dir, dtype=torch.float32)
        model.eval()
        self.model = model
        self.context_length: int = int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size: int = int(model.config.vocab_size)
        self.backend = self._make_backend(backend, cache_dir, build)

    # ----------------------------------------------------------------- setup
    def _stop_token_ids(self, vocab: dict[str, int]) -> frozenset[int]:
        from anima.tokenizer.chat_template import stop_token_ids

        ids: set[int] = set(stop_token_ids(self.tokenizer, self.template_name))
        for e in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, (list, tuple)):
                ids.update(int(x) for x in e)
        return frozenset(ids)

    def _make_backend(self, which: str, cache_dir: Path, build: str):
        from anima.generation.backends import FastLlamaBackend, HFBackend, fast_llama_unsupported

        if which == "hf":
            return HFBackend(self.model, self.context_length)
        why = fast_llama_unsupported(self.model)
        if why is not None:
            if which in ("fast", "compiled"):
                raise ModelError(f"{self.model_dir}: backend={which} cannot run this model ({why})")
            return HFBackend(self.model, self.context_length)
        if which == "fast":
            return FastLlamaBackend(self.model, self.context_length)
        from anima.generation.compiled import CompiledLlamaBackend

        return CompiledLlamaBackend(self.model, self.context_length, cache_dir,
                                    build="wait" if which == "compiled" else build, model_dir=self.model_dir)

    @property
    def backend_name(self) -> str:
        """What decodes now: compiled, fast or hf (auto moves from fast to compiled when its build lands)."""
        return self.backend.name

    def backend_status(self) -> str:
        """One line for humans: the backend, and for auto whether the compiled step is building or why not."""
        status = getattr(self.backend, "status", None)
        return status() if status else f"{self.backend.name} backend"

    def _refresh_backend(self) -> None:
        """Between requests: pick up a compiled step that finished building; retune threads for it."""
        refresh = getattr(self.backend, "refresh", None)
        if refresh is not None:
            refresh()
        if self.backend.name != self._tuned_for and self.tuner is not None:
            self.tuner = ThreadTuner(self.threads)
        self._tuned_for = self.backend.name

    # --------------------------------------------------------------- prompts
    def chat_prompt_ids(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """Render the conversation with the model's template, dropping the oldest exchanges (never the
        system prompt) so that prompt + max_new_tokens fits the context window. At least half the window
        stays available to the prompt; generation is clamped to whatever room is left."""
        from anima.tokenizer.chat_template import get_template, render_prompt

        if not messages:
            raise AnimaError("chat request has no messages")
        get_template(self.template_name)  # unknown preset -> ConfigError naming it
        reserve = min(max(int(max_new_tokens), 1), self.context_length // 2)
        with self._tok_lock:
            ids = render_prompt(messages, self.tokenizer, self.template_name, max_length=self.context_length - reserve)
        return list(ids)

    def completion_prompt_ids(self, prompt: str) -> list[int]:
        """Raw prompt ids (BOS added as the tokenizer is configured); no template, no trimming."""
        if not isinstance(prompt, str):
            raise AnimaError(f"completion prompt must be a string, got {type(prompt).__name__}")
        with self._tok_lock:
            return list(self.tokenizer.encode(prompt, add_special_tokens=True))

    # ------------------------------------------------------------- decoding
    def configure_batching(self, max_batch: int | None = None, request_timeout_s: float | None = None) -> int:
        """How many requests decode together, and how long one may take (None/0 = no limit; a reply still
        running at its deadline ends with finish reason "length"). Returns the batch this backend can run
        (1 for transformers' ``hf``). Takes effect when the engine is next idle."""
        if max_batch is not None:
            if int(max_batch) < 1:
                raise ConfigError(f"max_batch={max_batch}: must be >= 1")
            self.max_batch = int(max_batch)
        if request_timeout_s is not None:
            self.request_timeout_s = float(request_timeout_s) if request_timeout_s > 0 else None
        return 1 if self.backend.name == "hf" else self.max_batch

    def forget_cache(self) -> None:
        """Prefill every later prompt from scratch (no cached prefix reuse)."""
        self.scheduler.forget = True

    def _stream(self, prompt_ids: list[int], params: SamplingParams, continuation: bool = False) -> TextStream:
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        params.validate()
        if not prompt_ids:
            raise AnimaError("prompt is empty after tokenization")
        if len(prompt_ids) >= self.context_length:
            raise AnimaError(
                f"prompt is {len(prompt_ids)} tokens; model {self.name} has a context of {self.context_length}"
            )
        from anima.generation.batch import CANCEL
        from anima.generation.sequence import Sequence

        stream = TextStream(None, prompt_ids, logprobs=params.logprobs is not None, cancel=CANCEL.get())
        timeout = self.request_timeout_s
        deadline = time.monotonic() + timeout if timeout else None
        self.scheduler.submit(Sequence(self, list(prompt_ids), params, stream, continuation, deadline))
        return stream

    def _prefill_ids(self, backend, ids: list[int]):
        """Feed ``ids`` to the selected slot (the scheduler's thread); returns the logits of the last one."""
        import torch

        if self.tuner is not None and torch.get_num_threads() != self.tuner.best:
            torch.set_num_threads(self.tuner.best)  # a contended machine hurts prefill alike
        try:
            return backend.forward(ids)
        finally:
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)

    def _seen_mask(self, params: SamplingParams, prompt_ids: list[int]):
        """Tokens the repetition penalty applies to (None when it is off): the prompt's, minus the stop ids."""
        import torch

        if params.repetition_penalty == 1.0:
            return None
        seen = torch.zeros(self.vocab_size, dtype=torch.bool)
        seen[torch.tensor(prompt_ids, dtype=torch.long).clamp_(0, self.vocab_size - 1)] = True
        for stop_id in self.stop_ids:  # the end-of-turn token is in every chat prompt: penalising it
            if 0 <= stop_id < self.vocab_size:  # would make replies run on
                seen[stop_id] = False
        return seen

    def _token_logprob(self, logits, tok: int, k: int) -> TokenLogprob:
        """``tok``'s log-probability under the model, with the ``k`` most likely tokens at this position."""
        texts = self.token_texts
        lp, top = token_logprobs(logits, tok, k)
        alts = tuple(TokenLogprob(i, texts.text(i), texts.bytes(i), v) for i, v in top)
        return TokenLogprob(tok, texts.text(tok), texts.bytes(tok), lp, alts)

    # ------------------------------------------------------------------ API
    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[str]:
        """Text deltas of the assistant's reply to ``messages`` (OpenAI-style role/content dicts)."""
        params.validate()
        return self._stream(self.chat_prompt_ids(messages, params.max_new_tokens), params)

    def stream_completion(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Text deltas continuing a raw prompt (no chat template; BOS added per the tokenizer). The deltas are
        exactly what follows the prompt's text: a first token that starts a new word keeps its space."""
        params.validate()
        return self._stream(self.completion_prompt_ids(prompt), params, continuation=True)

    def stream_ids(self, prompt_ids: list[int], params: SamplingParams, *, continuation: bool = False) -> TextStream:
        """Text deltas after already tokenized prompt ids (e.g. Ollama's ``context`` plus a new turn);
        ``continuation`` as for a raw completion (keep the first space) rather than a new reply."""
        params.validate()
        return self._stream(list(prompt_ids), params, continuation=continuation)

    def chat(self, messages: list[dict], params: SamplingParams) -> Completion:
        return collect(self.stream_chat(messages, params))

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        return collect(self.stream_completion(prompt, params))
