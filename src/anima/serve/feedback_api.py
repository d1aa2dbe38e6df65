"""``POST /v1/feedback``: ratings and corrections from any HTTP client (and the chat page) into the feedback file.

Why here and not a second format: a record is built by ``anima.data.feedback.make_record`` and appended by
``append_feedback`` (one locked write per line), exactly as ``anima chat`` does, so the file ``anima retrain``
reads holds one format whoever wrote it. The model and registry version are the server's, never the client's;
the sampling settings are the OpenAI fields of the request that produced the reply, merged onto the server's
defaults, stored in the same shape as the REPL stores its settings.

Body: ``messages`` (the conversation ending with the assistant reply being rated; the message before it is the
user's), ``rating`` (``good``/``up`` or ``bad``/``down``) and/or ``correction`` (a better reply; implies
``bad``), optional ``sampling`` and ``model``. ``GET /v1/feedback`` says whether this server stores feedback,
and gives the sampling defaults the chat page starts from.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from anima.data.feedback import append_feedback, make_record
from anima.serve.errors import APIError
from anima.serve.protocol import openai_sampling, parse_messages, read_json_body
from anima.serve.runner import ServedModel

FIELDS = frozenset({"messages", "rating", "correction", "sampling", "model"})
RATING_NAMES = {"good": "up", "up": "up", "bad": "down", "down": "down"}  # the page says good/bad; the file up/down
SAMPLING_FIELDS = frozenset({"temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stop",
                             "repetition_penalty", "presence_penalty", "frequency_penalty"})


@dataclass(frozen=True)
class FeedbackSink:
    """Where this server's feedback goes (``path`` None: nowhere) and what model the records name."""

    path: Path | None
    model_uri: str = ""
    model_version: str | None = None

    @classmethod
    def at(cls, path: str | os.PathLike | None, model_uri: str = "", model_version: Any = None) -> "FeedbackSink":
        return cls(Path(path).expanduser() if path else None, model_uri,
                   None if model_version is None else str(model_version))


def _bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _rating(body: dict[str, Any]) -> tuple[str, str | None]:
    """("up" | "down", correction or None), from ``rating`` and ``correction``."""
    corr = body.get("correction")
    if corr is not None and not isinstance(corr, str):
        raise _bad("correction", "'correction' must be a string")
    corr = corr.strip() if corr else None
    raw = body.get("rating")
    if raw is None:
        if not corr:
            raise _bad("rating", "give a 'rating' (good or bad) and/or a non-empty 'correction'")
        return "down", corr
    rating = RATING_NAMES.get(raw) if isinstance(raw, str) else None
    if rating is None:
        raise _bad("rating", f"'rating' must be one of good, bad (or up, down), got {raw!r}")
    if rating == "up" and corr:
        raise _bad("correction", "a 'good' rating cannot carry a 'correction' (a correction means the reply was bad)")
    return rating, corr


def _conversation(body: dict[str, Any], served: ServedModel) -> tuple[list[dict[str, str]], str]:
    """(prompt up to and including the user turn, the rated reply) from ``messages``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise _bad("messages", "'messages' must list the conversation ending with the rated assistant reply "
                               "(at least a user message and the reply)")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise _bad(f"messages[{len(messages) - 1}]", f"messages[{len(messages) - 1}] must be the rated reply: "
                                                     "{\"role\": \"assistant\", \"content\": \"...\"}")
    prompt = parse_messages({"messages": messages[:-1]}, served.limits)
    if prompt[-1]["role"] != "user":
        i = len(messages) - 2
        raise _bad(f"messages[{i}]", f"messages[{i}] must be the user message the rated reply answers")
    return prompt, last["content"]


def _sampling(body: dict[str, Any], served: ServedModel) -> dict[str, Any]:
    """The reply's sampling settings (OpenAI names) merged onto the server's defaults, as SamplingParams fields."""
    raw = body.get("sampling")
    if raw is None:
        return asdict(served.defaults)
    if not isinstance(raw, dict):
        raise _bad("sampling", "'sampling' must be an object of the chat request's sampling fields")
    for key in raw:
        if key not in SAMPLING_FIELDS:
            raise _bad(f"sampling.{key}", f"'sampling.{key}' is not a sampling field; known: "
                                          f"{', '.join(sorted(SAMPLING_FIELDS))}")
    try:
        return asdict(openai_sampling(raw, served.defaults, served.limits))
    except APIError as e:  # name the field where it sits in this body
        param = f"sampling.{e.param}" if e.param else "sampling"
        raise APIError(e.status, e.message.replace(f"'{e.param}'", f"'{param}'"), param=param,
                       code=e.code) from None


def parse_feedback(body: dict[str, Any], served: ServedModel, sink: FeedbackSink) -> Any:
    """The validated FeedbackRecord for ``body``, or a 400 naming the first field at fault."""
    for key in body:
        if key not in FIELDS:
            raise _bad(key, f"'{key}' is not a feedback field; known: {', '.join(sorted(FIELDS))}")
    model = body.get("model")
    if model is not None and model != served.name:
        raise _bad("model", f"'model'={model!r}: this server serves {served.name!r}")
    rating, correction = _rating(body)
    prompt, reply = _conversation(body, served)
    sampling = _sampling(body, served)
    return make_record(prompt, reply, rating, correction=correction, model=sink.model_uri or served.name,
                       model_version=sink.model_version, sampling=sampling)


def feedback_routes(served: ServedModel, sink: FeedbackSink) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/feedback")
    async def feedback_info() -> dict[str, Any]:
        d = served.defaults
        return {"object": "feedback.info", "enabled": sink.path is not None, "model": served.name,
                "sampling": {"temperature": d.temperature, "top_p": d.top_p, "max_tokens": min(
                    d.max_new_tokens, served.limits.max_tokens), "seed": d.seed},
                "limits": {"max_tokens": served.limits.max_tokens}}

    @router.post("/v1/feedback")
    async def post_feedback(request: Request) -> dict[str, Any]:
        body = await read_json_body(request, served.limits)
        record = parse_feedback(body, served, sink)
        if sink.path is None:
            raise APIError(503, "this server stores no feedback (serve.feedback is null)", type="server_error",
                           code="feedback_disabled")
        await run_in_threadpool(append_feedback, sink.path, record)  # locked append + fsync: off the event loop
        return {"object": "feedback", "saved": True, "rating": record.rating,
                "correction": record.correction is not None, "model": record.model,
                "model_version": record.model_version, "timestamp": record.timestamp}

    return router
