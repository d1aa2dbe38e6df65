"""anima serve: the model behind an OpenAI-compatible (and Ollama-style) HTTP API on 127.0.0.1:8000, plus a
browser chat page at /chat whose ratings go to `serve.feedback` (the file `anima chat` writes, `anima retrain`
reads).

The API key, if any, is read from the environment variable named by `serve.api_key_env`: it never enters the
config, the command line or a log. No MLflow run: a server is a long-lived process, not an experiment.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from anima.config.serve import ServeOptions, ServeStageConfig
from anima.config.typed import typed
from anima.errors import ConfigError


def api_key(opts: ServeOptions) -> str | None:
    """The key in the variable `serve.api_key_env` names; None without one, an error when it is unset."""
    env = opts.api_key_env
    if not env:
        return None
    key = os.environ.get(env, "")
    if not key:
        raise ConfigError(f"serve.api_key_env={env}: the environment variable {env} is not set or empty "
                          f"(export it, or drop serve.api_key_env to serve without a key)")
    return key


def model_name(opts: ServeOptions, resolved: Any) -> str:
    """The id /v1/models reports: `serve.model_name`, else the registry name, else the model dir's name."""
    return opts.model_name or resolved.name or resolved.path.name


def build_app(cfg: DictConfig | ServeStageConfig):
    """(app, resolved model, served name): what `run` serves; tests start it with start_server_thread.
    `cfg` is converted once to `ServeStageConfig` (a server logs no run, so nothing needs the DictConfig)."""
    from anima.generation.sampling import sampling_from_config
    from anima.serve.app import create_app
    from anima.serve.feedback_api import FeedbackSink
    from anima.serve.limits import ServeLimits
    from anima.stages.chat import load_engine

    spec = typed(cfg, ServeStageConfig)
    opts = spec.serve
    key = api_key(opts)  # before loading the model: a missing key fails at once
    defaults = sampling_from_config(spec.sampling)
    resolved, engine = load_engine(spec, opts.backend, opts.compile)
    name = model_name(opts, resolved)
    feedback = FeedbackSink.at(opts.feedback, resolved.canonical_uri, resolved.version)
    app = create_app(engine, api_key=key, limits=ServeLimits.from_config(opts.limits), defaults=defaults,
                     model_name=name, workers=opts.workers, feedback=feedback)
    app.state.feedback = feedback
    return app, resolved, name


def chat_page_line(base: str, feedback: Any, key_env: str | None) -> str:
    """Where the browser chat page is and where its ratings go (``feedback``: the app's FeedbackSink)."""
    where = f"ratings to {feedback.path}" if feedback.path else "ratings not saved (serve.feedback is null)"
    key = f"; the page asks for the API key (${key_env})" if key_env else ""
    return f"  chat page: {base}/chat ({where}{key})"


def bind(host: str, port: int):
    """A listening socket on host:port, or a one-line error naming the keys (before the model loads)."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:  # address in use, permission denied, unknown host
        sock.close()
        raise ConfigError(f"serve.host={host} serve.port={port}: cannot listen ({e.strerror or e})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run(cfg: DictConfig) -> None:
    import uvicorn

    from anima.serve.server import _check_bind
    from anima.stages.chat import describe

    spec = typed(cfg, ServeStageConfig)
    opts = spec.serve
    host, key_env = opts.host, opts.api_key_env
    _check_bind(host, opts.port, "set" if key_env else None)  # warns: public address, no key
    sock = bind(host, opts.port)
    try:
        app, resolved, name = build_app(spec)
        port = sock.getsockname()[1]
        base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        print(f"serving {describe(resolved)} as {name!r} on {base}/v1 (OpenAI: /v1/chat/completions, "
              f"/v1/completions, /v1/models; Ollama: /api/chat, /api/generate, /api/tags, /api/show)"
              + (f"; API key from ${key_env}" if key_env else ""), flush=True)
        print(f"  decode: {app.state.runner.engine.backend_status()}", flush=True)
        print(chat_page_line(base, app.state.feedback, key_env), flush=True)
        print(f"  try: curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
              flush=True)
        level = opts.log_level
        server = uvicorn.Server(uvicorn.Config(app, log_level=level, access_log=level == "debug", lifespan="on"))
        server.run(sockets=[sock])
    finally:
        sock.close()
