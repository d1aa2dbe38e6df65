"""Run the serving app with uvicorn: in the foreground (``anima serve``) or in a background thread (tests, benches).

Binds 127.0.0.1 unless told otherwise: a chat model on a shared network should be an explicit choice, and
then an API key is strongly advised (a warning says so).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from anima.errors import ConfigError

log = logging.getLogger("anima.serve")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_bind(host: str, port: int, api_key: str | None) -> None:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"serve.port={port!r}: must be an integer in 0..65535")
    if not _is_loopback(host) and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                    "(set serve.api_key_env)", host)


def run_server(
    engine: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api_key: str | None = None,
    limits: Any = None,
    defaults: Any = None,
    model_name: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``engine`` until interrupted (Ctrl-C / SIGTERM stop it cleanly)."""
    import uvicorn

    from anima.serve.app import create_app

    _check_bind(host, port, api_key)
    app = create_app(engine, api_key=api_key, limits=limits, defaults=defaults, model_name=model_name)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")
    except OSError as e:  # e.g. address already in use
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@dataclass
class RunningServer:
    """A uvicorn server running in a daemon thread; ``stop()`` shuts it down gracefully."""

    server: Any
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server_thread(app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning",
                        startup_timeout: float = 30.0) -> RunningServer:
    """Start ``app`` on ``host:port`` (port 0 = a free one) in a thread; returns once it accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    actual_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="anima-serve")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on {host}:{actual_port} failed to start")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{actual_port} did not start within {startup_timeout}s")
        time.sleep(0.02)
    return RunningServer(server=server, thread=thread, host=host, port=actual_port)


def main(argv: list[str] | None = None) -> int:
    """Bare server over a model dir, no config or registry (benchmarks): ``python -m anima.serve.server DIR``.

    The API key, if any, is read from the environment variable named by ``--api-key-env``.
    """
    import argparse
    import os

    from anima.generation.engine import BACKENDS, ChatEngine
    from anima.serve.limits import ServeLimits

    p = argparse.ArgumentParser(prog="python -m anima.serve.server", description=main.__doc__)
    p.add_argument("model_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--api-key-env", default=None, help="environment variable holding the API key")
    p.add_argument("--max-tokens", type=int, default=ServeLimits.max_tokens)
    p.add_argument("--log-level", default="info")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--cache-dir", default=None, help="compiled decode steps (default: the project's data/cache)")
    args = p.parse_args(argv)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    engine = ChatEngine(args.model_dir, threads=args.threads, backend=args.backend, cache_dir=args.cache_dir)
    run_server(engine, args.host, args.port, api_key=api_key, limits=ServeLimits(max_tokens=args.max_tokens),
               log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
