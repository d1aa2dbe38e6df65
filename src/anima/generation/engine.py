"""ChatEngine: load a model dir once, answer chat/completion requests as streams of text deltas.

One engine owns one model and one KV cache. Requests are serialized by a lock held for the whole
stream (a server runs them one after another; each still sees a clean state). The cache is reused
across requests for the longest shared token prefix, so a multi-turn chat only prefills the new turn.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Iterator

from anima.errors import AnimaError, ConfigError, ModelError
from anima.generation.detok import IncrementalDetokenizer, StopHolder, hold_token_ids, make_decoder
from anima.generation.sampling import SamplingParams, make_generator, sample_next
from anima.generation.threads import ThreadTuner, timed_threads

BACKENDS = ("auto", "compiled", "fast", "hf")
BUILDS = ("never", "background", "wait")


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class TextStream(Iterator[str]):
    """An iterator of text deltas that also carries this request's usage once it is exhausted.

    Prefer ``stream.prompt_tokens`` / ``completion_tokens`` / ``finish_reason`` over the engine's
    ``last_usage`` when several requests run concurrently.
    """

    def __init__(self, gen: Iterator[str], prompt_tokens: int):
        self._gen = gen
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.token_ids: list[int] = []  # every sampled id, including a final stop token

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()


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


def _drain(detok: IncrementalDetokenizer, holder: StopHolder) -> tuple[str, bool]:
    """The text still held back at the end of a reply, and whether it completes a stop string."""
    tail = detok.flush()
    out, hit = holder.feed(tail) if tail else ("", False)
    if not hit:
        out += holder.flush()
    return out, hit


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

        from anima.model.build import load_model_dir

        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        if build not in BUILDS:
            raise ConfigError(f"build={build!r}: expected one of {', '.join(BUILDS)}")
        model_dir = Path(model_dir).expanduser()
        if not (model_dir / "config.json").is_file():
            raise ModelError(f"{model_dir}: not a model directory (no config.json)")
        if threads:
            torch.set_num_threads(int(threads))
        self.threads: int = torch.get_num_threads()
        meta = _read_anima_json(model_dir)
        self.model_dir = model_dir
        self.name: str = str(meta.get("name") or model_dir.name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"{model_dir}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
        model = load_model_dir(model_dir, dtype=torch.float32)
        model.eval()
        self.model = model
        vocab = self.tokenizer.get_vocab()
        default_template = "chatml" if "<|im_end|>" in vocab else "qa"
        self.template_name: str = str(meta.get("chat_template") or default_template)
        self.context_length: int = int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size: int = int(model.config.vocab_size)
        self.stop_ids = self._stop_token_ids(vocab)
        if cache_dir is None:
            from anima.paths import project_root

            cache_dir = project_root() / "data" / "cache"
        self.backend = self._make_backend(backend, Path(cache_dir), build)
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
        self._lock = threading.Lock()
        self._cached_ids: list[int] = []
        self.last_usage: tuple[int, int, str] | None = None

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
                                    build="wait" if which == "compiled" else build)

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
    def _stream(self, prompt_ids: list[int], params: SamplingParams) -> TextStream:
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        params.validate()
        if not prompt_ids:
            raise AnimaError("prompt is empty after tokenization")
        if len(prompt_ids) >= self.context_length:
            raise AnimaError(
                f"prompt is {len(prompt_ids)} tokens; model {self.name} has a context of {self.context_length}"
            )
        stream = TextStream(iter(()), len(prompt_ids))
        stream._gen = self._decode_loop(list(prompt_ids), params, stream)
        return stream

    def _decode_loop(self, prompt_ids: list[int], params: SamplingParams, stream: TextStream) -> Iterator[str]:
        """Prefill, then sample token by token under the model lock; a failure mid-way leaves no stale cache."""
        import torch

        with self._lock:
            self._refresh_backend()
            backend = self.backend
            logits = self._prefill(backend, prompt_ids)
            fed = list(prompt_ids)
            self._cached_ids = fed
            max_new = min(params.max_new_tokens, self.context_length - len(prompt_ids))
            try:
                finish = yield from self._sample_tokens(backend, logits, fed, params, stream, max_new)
            except BaseException:
                if not self._cached_ids:
                    backend.truncate(0)
                raise
            finally:
                if torch.get_num_threads() != self.threads:
                    torch.set_num_threads(self.threads)
            stream.finish_reason = finish
            self.last_usage = (len(prompt_ids), stream.completion_tokens, finish)

    def _prefill(self, backend, prompt_ids: list[int]):
        """Feed the prompt, reusing the cached prefix shared with the previous request (keep >= 1 token to
        feed); returns the logits of the last prompt token."""
        import torch

        common = 0
        limit = min(len(self._cached_ids), len(prompt_ids) - 1)
        cached_ids = self._cached_ids
        while common < limit and cached_ids[common] == prompt_ids[common]:
            common += 1
        backend.truncate(common)
        common = backend.position
        self._cached_ids = []  # invalid until the cache is consistent again
        if self.tuner is not None and torch.get_num_threads() != self.tuner.best:
            torch.set_num_threads(self.tuner.best)  # a contended machine hurts prefill alike
        try:
            return backend.forward(prompt_ids[common:])
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

    def _sample_tokens(self, backend, logits, fed: list[int], params: SamplingParams, stream: TextStream,
                       max_new: int) -> Generator[str, None, str]:
        """Yield text deltas until a stop token, a stop string or ``max_new`` tokens; returns the finish reason."""
        import torch

        generator = None if params.greedy else make_generator(params.seed)
        seen = self._seen_mask(params, fed)
        plain_greedy = params.greedy and seen is None
        detok = IncrementalDetokenizer(self._decode, self._hold_ids)
        holder = StopHolder(params.stop)
        finish, n, tuner = "length", 0, self.tuner
        while n < max_new:
            tok = int(torch.argmax(logits)) if plain_greedy else sample_next(logits, params, generator, seen)
            n += 1
            stream.completion_tokens = n
            stream.token_ids.append(tok)
            if tok in self.stop_ids:
                finish = "stop"
                break
            delta = detok.push(tok)
            if delta:
                out, hit = holder.feed(delta)
                if out:
                    yield out
                if hit:
                    return "stop"
            if n >= max_new:
                break
            logits = self._feed_token(backend, tuner, tok, fed, seen)
        out, hit = _drain(detok, holder)
        if out:
            yield out
        return "stop" if hit else finish

    def _feed_token(self, backend, tuner: ThreadTuner | None, tok: int, fed: list[int], seen):
        """One decode step; the cache is marked invalid while the backend runs."""
        import torch

        self._cached_ids = []
        if tuner is not None:
            with timed_threads(torch, tuner):
                logits = backend.forward([tok])
        else:
            logits = backend.forward([tok])
        fed.append(tok)
        self._cached_ids = fed
        if seen is not None and 0 <= tok < self.vocab_size:
            seen[tok] = True
        return logits

    # ------------------------------------------------------------------ API
    def stream_chat(self, messages: list[dict], params: SamplingParams) -> Iterator[str]:
        """Text deltas of the assistant's reply to ``messages`` (OpenAI-style role/content dicts)."""
        params.validate()
        return self._stream(self.chat_prompt_ids(messages, params.max_new_tokens), params)

    def stream_completion(self, prompt: str, params: SamplingParams) -> Iterator[str]:
        """Text deltas continuing a raw prompt (no chat template; BOS added per the tokenizer)."""
        params.validate()
        return self._stream(self.completion_prompt_ids(prompt), params)

    @staticmethod
    def _collect(stream: TextStream) -> Completion:
        text = "".join(stream)
        return Completion(text, stream.prompt_tokens, stream.completion_tokens, stream.finish_reason or "length")

    def chat(self, messages: list[dict], params: SamplingParams) -> Completion:
        return self._collect(self.stream_chat(messages, params))

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        return self._collect(self.stream_completion(prompt, params))
