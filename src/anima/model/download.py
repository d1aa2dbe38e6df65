"""Models that live on a tracking server come down once per version into `<project>/mlruns/cache/`.

A team's clients share no filesystem: a registered version's weights are downloaded through the tracking server
(`mlflow-artifacts:/`, `runs:/`, s3://...). The download goes into a private folder under `cache/.partial/` and is
renamed into place only when complete, so an interrupted download (error, Ctrl-C, kill -9) never leaves a
half-populated cache entry: a later call downloads again. A marker file names the source the entry came from; an
entry from another source (another server's version with the same name and number) is replaced.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from anima.errors import ModelError
from anima.procs import pid_alive

MARKER = ".anima-source.json"
PARTIAL = ".partial"


def cache_root() -> Path:
    """`<project root>/mlruns/cache` (ANIMA_ROOT moves the project root)."""
    from anima.paths import project_root

    return project_root() / "mlruns" / "cache"


def _source_id(uri: str) -> dict[str, str]:
    import mlflow

    from anima.tracking.redact import redact_text

    return {"source": uri, "tracking": redact_text(str(mlflow.get_tracking_uri()))}


def cached(dest: Path, uri: str) -> bool:
    """True when `dest` is a complete download of `uri` from the current tracking store."""
    try:
        return json.loads((dest / MARKER).read_text()) == _source_id(uri)
    except (OSError, ValueError):
        return False


def _sweep_partials(folder: Path) -> None:
    """Remove the partial downloads of processes that are gone (killed mid-download)."""
    if not folder.is_dir():
        return
    for d in folder.iterdir():
        pid = d.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def download_model(uri: str, dest: Path) -> Path:
    """The model dir at artifact `uri`, downloaded once into `dest` (atomically; see the module doc)."""
    if cached(dest, uri):
        return dest
    import mlflow

    partials = cache_root() / PARTIAL
    _sweep_partials(partials)
    tmp = partials / f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
        except Exception as e:
            if type(e).__name__ == "MlflowException" and "API request to" not in str(e):
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelError(f"{uri}: cannot download the model: {first[:300]}") from None
            raise  # the server went away: the stage reports it in one line naming the tracking URI
        if not (got / "config.json").is_file():
            raise ModelError(f"{uri} holds no model (config.json missing)")
        (got / MARKER).write_text(json.dumps(_source_id(uri)))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # an entry from another source (or left by an older anima): replace it
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(got, dest)  # atomic: the entry appears complete or not at all
        except OSError:
            if not cached(dest, uri):  # lost a race with a process that downloaded the same version
                raise
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
