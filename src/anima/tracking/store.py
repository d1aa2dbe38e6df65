"""Point MLflow at the project's store and make sure the experiment exists with its artifact root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_reachable: set[str] = set()

# MLflow's HTTP client retries an unreachable server for minutes (7 retries, backoff factor 2, 120 s timeout).
# Bounded here (a user's own environment settings win): a few retries ride out a server restart mid-run.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 5.0


def check_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast, in one line naming the URI, when an http(s) tracking server does not answer.

    One request to the server's /health (200; 401/403 behind an authenticating proxy). Without this a stage
    would start, then stall in MLflow's retries and end in a traceback."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from anima.errors import ConfigError

    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # credentials are MLflow's business, not the probe's
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return
        reason = f"HTTP {e.code} from /health: not an MLflow tracking server"
    except (OSError, ValueError) as e:  # URLError, refused, timeout, bad host
        reason = f"cannot reach the MLflow tracking server ({getattr(e, 'reason', e)})"
    from anima.tracking.redact import redact_text

    raise ConfigError(f"tracking.uri={redact_text(uri)}: {reason}")


def setup_mlflow(tracking: Any) -> str:
    """Set the tracking URI (creating the sqlite dir; checking that a server answers) and return the
    experiment id."""
    uri = str(tracking.uri)
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if uri not in _reachable:
            check_server(uri)
            _reachable.add(uri)
    import mlflow

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = str(tracking.experiment)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        root = str(tracking.artifact_root)
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
            root = Path(root).resolve().as_uri()
        try:
            exp_id = mlflow.create_experiment(name, artifact_location=f"{root}/{name}")
        except Exception:  # created concurrently by another process
            exp_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
