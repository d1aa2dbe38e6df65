"""Teachers that answer chat prompts: any OpenAI-compatible endpoint, or a local model dir.

The API key is read from an environment variable at construction and kept only inside the client object:
it never appears in ``repr``, names, logs or error messages (any echo of it is redacted).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from anima.errors import AnimaError, ConfigError
from anima.generation.sampling import SamplingParams

Messages = list[dict[str, str]]

_SECRET_QUERY = re.compile(r"(?i)((?:api[_-]?key|key|token|secret|password|sig)=)[^&]+")


def redact_url(url: str) -> str:
    """``url`` with any password in the userinfo and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = _SECRET_QUERY.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@runtime_checkable
class TeacherClient(Protocol):
    """Anything that can answer a conversation. ``name`` is recorded in the dataset (no secrets in it)."""

    name: str

    def reply(self, messages: Messages, params: SamplingParams) -> str: ...


class OpenAITeacher:
    """A teacher behind an OpenAI-compatible ``/v1/chat/completions`` (OpenAI, vLLM, llama.cpp, ``anima serve``).

    ``api_key_env`` names the environment variable holding the key. When it is unset the client sends a
    placeholder key, which local servers without auth accept and others answer 401 (reported as an error
    naming the variable, not the key).
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 2) -> None:
        import openai

        if not base_url or not isinstance(base_url, str):
            raise ConfigError(f"teacher.base_url={base_url!r}: must be a URL like http://127.0.0.1:8000/v1")
        if not model:
            raise ConfigError("teacher.model is empty: name the model the endpoint should use")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self._has_key = bool(key)
        self._secret = key
        self._client = openai.OpenAI(base_url=base_url, api_key=key or "anima-no-key", timeout=self.timeout,
                                     max_retries=self.max_retries)

    @property
    def name(self) -> str:
        return f"openai:{self.model}@{redact_url(self.base_url)}"

    def __repr__(self) -> str:
        key = "***" if self._has_key else "unset"
        return (f"OpenAITeacher(base_url={redact_url(self.base_url)!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, api_key={key}, timeout={self.timeout}, "
                f"max_retries={self.max_retries})")

    __str__ = __repr__

    def _redact(self, text: str) -> str:
        from anima.tracking.redact import redact_text

        text = text.replace(self._secret, "***") if self._secret else text
        return redact_text(text.replace(self.base_url, redact_url(self.base_url)))

    def reply(self, messages: Messages, params: SamplingParams) -> str:
        import openai

        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        extra = {}  # non-standard knobs: sent only when set, since strict endpoints reject unknown fields
        if params.top_k:
            extra["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if extra:
            kwargs["extra_body"] = extra
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            hint = f"set {self.api_key_env}" if self.api_key_env else "set teacher.api_key_env"
            raise AnimaError(f"teacher {self.name} refused the API key (HTTP {e.status_code}): {hint} "
                             f"to a valid key") from None
        except openai.NotFoundError as e:
            raise AnimaError(f"teacher {self.name}: HTTP 404 ({self._redact(_short(e))}); check teacher.base_url "
                             f"(it usually ends in /v1) and teacher.model") from None
        except openai.APIError as e:
            raise TeacherError(f"teacher {self.name}: {type(e).__name__}: {self._redact(_short(e))}") from None
        if not resp.choices:
            raise TeacherError(f"teacher {self.name} returned no choices")
        return resp.choices[0].message.content or ""


class TeacherError(Exception):
    """One prompt failed (after the client's retries); synthesis counts it and goes on."""


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


class HFTeacher:
    """A local model dir (anima-trained or any Hugging Face causal LM with a chat template) as the teacher."""

    kind = "hf"

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, backend: str = "auto",
                 engine: Any = None) -> None:
        self.model_dir = Path(model_dir)
        self._threads = threads
        self._backend = backend
        self._engine = engine

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from anima.generation.engine import ChatEngine

            self._engine = ChatEngine(self.model_dir, threads=self._threads, backend=self._backend)
        return self._engine

    @property
    def name(self) -> str:
        return f"hf:{self.model_dir}"

    def __repr__(self) -> str:
        return f"HFTeacher(model_dir={str(self.model_dir)!r})"

    def reply(self, messages: Messages, params: SamplingParams) -> str:
        return self.engine.chat(messages, params).text
