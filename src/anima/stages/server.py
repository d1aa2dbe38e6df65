"""`anima server`: a team's MLflow tracking server. PostgreSQL holds runs and the registry; the server stores
and serves artifacts itself (`--serve-artifacts`), so clients on other machines upload and download models
through it (`mlflow-artifacts:/`) and never read another machine's paths.

The backend database is checked first (a wrong password or an unreachable host is one line and exit 2 within
seconds); then `mlflow server` runs in the foreground until Ctrl-C or SIGTERM, which stop it and its workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from anima.config.server import ServerOptions, ServerStageConfig
from anima.config.typed import typed
from anima.errors import AnimaError, ConfigError


def server_command(opts: ServerOptions) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and environment for `server.*` (the database is not touched)."""
    from anima.tracking.database import with_driver

    dest = opts.artifacts_destination
    if "://" not in dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        dest = str(Path(dest).resolve())
    backend = with_driver(opts.backend_uri)
    if backend.startswith("sqlite:///"):
        Path(backend[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", backend,
           "--serve-artifacts", "--artifacts-destination", dest, "--host", opts.host, "--port",
           str(opts.port), "--workers", str(opts.workers)]
    if opts.allowed_hosts:
        cmd += ["--allowed-hosts", opts.allowed_hosts]
    # no job runner (it forks processes that outlive the server); no telemetry
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return cmd, env


def check_backend(opts: ServerOptions) -> bool:
    """Reach the backend database within `server.connect_timeout` seconds (creating it with `create_db`);
    True when it was created."""
    from anima.tracking.database import check_postgres, is_postgres

    uri = opts.backend_uri
    if is_postgres(uri):
        return check_postgres(uri, "server.backend_uri", opts.connect_timeout, opts.create_db)
    if not uri.startswith(("sqlite:", "mysql", "mssql")):
        raise ConfigError(f"server.backend_uri={uri}: not a database URL (postgresql://..., sqlite:///...)")
    return False


def _raise_on_sigterm() -> None:
    """SIGTERM/SIGHUP end the server as Ctrl-C does (a plain SIGTERM would leave `mlflow server` running)."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def run(cfg: Any) -> int:
    """Check the database, then run `mlflow server` in the foreground; `cfg` is converted once to
    `ServerStageConfig` (the server logs no run)."""
    from anima.stages.ui import stop, wait_ready
    from anima.tracking.redact import redact_text

    opts = typed(cfg, ServerStageConfig).server
    created = check_backend(opts)
    cmd, env = server_command(opts)
    url = f"http://{opts.host}:{opts.port}"
    client_host = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
    print(f"anima server: {'created database; ' if created else ''}backend {redact_text(opts.backend_uri)}, "
          f"artifacts {redact_text(opts.artifacts_destination)}; starting MLflow on {url} ...", flush=True)
    _raise_on_sigterm()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        if not wait_ready(f"http://{client_host}:{opts.port}", proc, timeout=opts.ready_timeout):
            code = proc.poll()
            why = f"exited with code {code}" if code is not None else f"no answer on /health in {opts.ready_timeout}s"
            raise AnimaError(f"server.port={opts.port}: mlflow server did not come up on {url} ({why}; "
                             "port in use? see its output above)")
        print(f"anima server: ready on {url}. Clients: anima <stage> tracking=server "
              f"tracking.uri=http://<this host>:{opts.port}   (Ctrl-C stops it)", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        print("anima server: stopping", flush=True)
        return 0
    finally:
        stop(proc)
    if proc.returncode not in (0, -signal.SIGTERM):
        raise AnimaError(f"mlflow server on {url} exited with code {proc.returncode} (see its output above)")
    return 0
