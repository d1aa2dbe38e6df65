"""One resolver for every place a model is expected: models:/name@alias, models:/name/N,
models:/name@latest, runs:/<run_id>/<path>, or a local directory -> a local HF model dir."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlparse

from anima.errors import ModelError
from anima.tracking.registry import model_uri

MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")
RUNS_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-f]+)/(?P<path>.+)$")


@dataclass
class ResolvedModel:
    uri: str
    path: Path
    name: Optional[str] = None
    version: Optional[str] = None
    run_id: Optional[str] = None

    @property
    def canonical_uri(self) -> str:
        """A URI that keeps pointing at the same weights (aliases move; versions don't)."""
        if self.name and self.version:
            return model_uri(self.name, self.version)
        if self.run_id:
            return f"runs:/{self.run_id}/model"
        return str(self.path)


#: Weight files that unpickle on load: a dir holding only these is refused (DESIGN: never unpickle weights).
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


def require_safetensors(path: Path) -> Path:
    """`path` if its weights are safetensors; a dir with only pickled weights fails in one line naming it.
    (A dir without any weights is left to the loader, which names what is missing.)"""
    names = {p.name for p in Path(path).iterdir()} if Path(path).is_dir() else set()
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") or n.endswith(".gguf")
           for n in names):
        return path
    pickled = sorted(n for n in names if n in PICKLE_WEIGHTS
                     or (n.startswith(("pytorch_model", "model")) and n.endswith((".bin", ".pt", ".pth"))))
    if pickled:
        raise ModelError(f"model dir {path} has only pickled weights ({', '.join(pickled)}); anima loads "
                         "safetensors only: re-save it with save_pretrained(..., safe_serialization=True)")
    return path


def _local_path(artifact_uri: str) -> Path | None:
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def _materialize(artifact_uri: str, cache_key: str, tracking: Any | None) -> Path:
    """A local dir holding the model at `artifact_uri`: the path itself for a file:// source on this machine
    (the local store), else a per-version download through the tracking server (anima.model.download)."""
    local = _local_path(artifact_uri)
    if local is not None:
        if not local.exists():
            raise ModelError(f"{artifact_uri} is not on this machine: the model was stored as a local path of the "
                             "machine that trained it; run that stage with tracking=server against a server that "
                             "serves artifacts (anima server), or copy the files there")
        if not (local / "config.json").is_file():
            raise ModelError(f"{artifact_uri} holds no model (config.json missing)")
        return local
    from anima.model.download import cache_root, download_model

    return download_model(artifact_uri, cache_root() / cache_key)


def resolve_model(uri: str, tracking: Any | None = None) -> ResolvedModel:
    """Resolve any model URI to a local HF dir. Unknown names/aliases list what exists."""
    from anima.tracking.store import setup_mlflow

    uri = str(uri).strip()
    if m := MODELS_URI.match(uri):
        if tracking is not None:
            setup_mlflow(tracking)
        return _resolve_registry(uri, m["name"], m["version"], m["alias"], tracking)
    if m := RUNS_URI.match(uri):
        if tracking is not None:
            setup_mlflow(tracking)
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            run = mlflow.get_run(m["run_id"])
        except MlflowException:
            raise ModelError(f"{uri}: no run {m['run_id']} in the tracking store") from None
        path = _materialize(f"{run.info.artifact_uri}/{m['path']}", f"runs/{m['run_id']}", tracking)
        return ResolvedModel(uri, require_safetensors(path), run_id=m["run_id"])
    if uri.startswith(("models:", "runs:")):
        raise ModelError(f"malformed model URI {uri!r}; use models:/name@alias, models:/name/N, "
                         "runs:/<run_id>/model or a local directory")
    path = Path(uri).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"model {uri!r} is neither a registry URI nor a local model dir (no config.json)")
    return ResolvedModel(uri, require_safetensors(path.resolve()))


def _resolve_registry(uri: str, name: str, version: str | None, alias: str | None,
                      tracking: Any | None) -> ResolvedModel:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from anima.tracking.registry import require_registered

    client = MlflowClient()
    model = require_registered(name)
    if alias == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ModelError(f"{uri}: {name} has no versions")
        version = str(max(int(v.version) for v in versions))
        alias = None
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        if alias:
            known = ", ".join(f"@{a} (v{v})" for a, v in sorted(model.aliases.items())) or "none"
            raise ModelError(f"{uri}: {name} has no alias {alias!r}; aliases: {known}; "
                             f"or use @latest / a version number") from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ModelError(f"{uri}: {name} has no version {version}; versions: "
                         f"{', '.join(map(str, versions)) or 'none'}") from None
    path = _materialize(mv.source, f"models/{name}/{mv.version}", tracking)
    return ResolvedModel(uri, require_safetensors(path), name=name, version=str(mv.version), run_id=mv.run_id)
