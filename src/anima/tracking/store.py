"""Point MLflow at the project's store and make sure the experiment exists with its artifact root."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_reachable: set[str] = set()
_warned: set[str] = set()

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
        location = _artifact_location(uri, getattr(tracking, "artifact_root", None), name)
        try:
            exp_id = mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        exp_id = exp.experiment_id
        _warn_machine_local(uri, exp, getattr(tracking, "artifact_root", None))
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _artifact_location(uri: str, artifact_root: str | None, name: str) -> str | None:
    """Where a new experiment keeps its artifacts: `<artifact_root>/<name>`; with no artifact_root, beside a
    sqlite store, or (a tracking server) None: the server's own default, `mlflow-artifacts:/` when it serves
    artifacts, so clients upload and download through it and never record a path of their machine."""
    root = str(artifact_root) if artifact_root else None
    if root is None and uri.startswith("sqlite:///"):
        root = str(Path(uri[len("sqlite:///"):]).parent / "artifacts")
    if root is None:
        return None
    if "://" not in root:
        Path(root).mkdir(parents=True, exist_ok=True)
        root = Path(root).resolve().as_uri()
    return f"{root}/{name}"


def _warn_machine_local(uri: str, exp: Any, artifact_root: str | None) -> None:
    """A server experiment created with a local artifact path (by an older anima) records paths of one machine:
    say so once, naming the way out."""
    if artifact_root or not uri.startswith(("http://", "https://")) or uri in _warned:
        return
    if str(exp.artifact_location).startswith("file:"):
        import sys

        from anima.tracking.redact import redact_text

        _warned.add(uri)
        print(f"anima: warning: experiment {exp.name!r} on {redact_text(uri)} stores artifacts at {exp.artifact_location} "
              "(a path of one machine); other machines cannot download its models: use a new "
              "tracking.experiment=<name> so artifacts go through the server", file=sys.stderr)


def _is_connection_failure(exc: BaseException) -> str | None:
    """The reason when `exc` (or an exception it was raised from) is the tracking server not answering."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        mod = type(e).__module__
        if mod.startswith(("requests", "urllib3")) and "Error" in type(e).__name__:
            return type(e).__name__
        if type(e).__name__ == "MlflowException" and text.startswith("API request to") and \
                "failed with exception" in text:
            return "connection failed after retries"
        if isinstance(e, ConnectionError):
            return type(e).__name__
        e = e.__cause__ or e.__context__
    return None


def tracking_failure(exc: BaseException, uri: str) -> Exception | None:
    """A one-line ConfigError naming the URI when `exc` means the http(s) tracking server went away (mid-run);
    None for any other error, which propagates as it is."""
    if not str(uri).startswith(("http://", "https://")):
        return None
    reason = _is_connection_failure(exc)
    if reason is None:
        return None
    from anima.errors import AnimaError
    from anima.tracking.redact import redact_text

    return AnimaError(f"tracking.uri={redact_text(str(uri))}: the MLflow tracking server stopped answering "
                      f"({reason}); start it again and rerun (a training run continues from its last checkpoint "
                      f"with resume=auto)")
