"""Candidates from the model registry, and their perplexities cached as version tags.

A candidate is one registry version (or any model URI). Its perplexity on an eval set is stored on the version
as the tag ``ppl.<eval set fingerprint>``; ranking again on the same data reads the tags and loads no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from anima.errors import AnimaError, ModelError
from anima.evaluation.evalsets import EvalSet
from anima.tracking.registry import model_uri, tag_version


@dataclass
class Candidate:
    uri: str  # canonical: models:/name/N (aliases move, versions do not), runs:/id/model or a dir
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    path: Path | None = None  # local model dir, resolved on first need
    scores: dict[str, float] = field(default_factory=dict)  # eval set name -> perplexity
    cached: dict[str, bool] = field(default_factory=dict)  # eval set name -> came from a tag

    @property
    def label(self) -> str:
        return f"v{self.version}" if self.version else self.uri

    def local_path(self, tracking: Any) -> Path:
        if self.path is None:
            from anima.model.resolve import resolve_model

            try:
                self.path = resolve_model(self.uri, tracking).path
            except AnimaError:
                raise
            except Exception as e:  # artifact download / store errors
                raise ModelError(f"{self.uri}: cannot fetch the model: {str(e).splitlines()[0][:200]}") from None
        return self.path


def _aliases_by_version(name: str) -> dict[str, list[str]]:
    from anima.tracking.registry import list_aliases

    out: dict[str, list[str]] = {}
    for alias, version in list_aliases(name).items():
        out.setdefault(str(version), []).append(alias)
    return out


def candidate_from_version(mv, aliases: Mapping[str, list[str]] | None = None) -> Candidate:
    return Candidate(uri=model_uri(mv.name, mv.version), name=mv.name, version=str(mv.version),
                     run_id=mv.run_id, tags=dict(mv.tags or {}),
                     aliases=sorted((aliases or {}).get(str(mv.version), [])))


def candidate_from_uri(uri: str, tracking: Any) -> Candidate:
    """Any model URI; registry URIs become their version (so tags cache scores for them too)."""
    from anima.model.resolve import resolve_model

    resolved = resolve_model(uri, tracking)
    if resolved.name and resolved.version:
        from mlflow import MlflowClient

        mv = MlflowClient().get_model_version(resolved.name, resolved.version)
        cand = candidate_from_version(mv, _aliases_by_version(resolved.name))
    else:
        cand = Candidate(uri=resolved.canonical_uri, run_id=resolved.run_id)
    cand.path = resolved.path
    return cand


def select_candidates(name: str, *, tags: Mapping[str, str] | None = None, aliases: Sequence[str] = (),
                      study: str | None = None, versions: Sequence[int] = (),
                      include_merges: bool = False) -> list[Candidate]:
    """Versions of ``name`` matching every given filter, oldest first; a one-line error when none match."""
    from mlflow import MlflowClient

    from anima.tracking.registry import require_registered

    require_registered(name)
    by_version = _aliases_by_version(name)
    all_versions = sorted(MlflowClient().search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    want = {str(v) for v in versions}
    out, why = [], []
    for mv in all_versions:
        t = dict(mv.tags or {})
        if want and str(mv.version) not in want:
            continue
        if tags and any(t.get(k) != str(v) for k, v in tags.items()):
            continue
        if aliases and not set(aliases) & set(by_version.get(str(mv.version), [])):
            continue
        if study and t.get("sweep_study") != study:
            continue
        if not include_merges and t.get("stage") == "merge":
            continue
        out.append(candidate_from_version(mv, by_version))
    if not out:
        if tags:
            why.append("tags " + ",".join(f"{k}={v}" for k, v in tags.items()))
        if aliases:
            why.append("aliases " + ",".join(aliases))
        if study:
            why.append(f"sweep study {study}")
        if versions:
            why.append("versions " + ",".join(map(str, versions)))
        if not include_merges:
            why.append("merges excluded (merge.include_merges=true adds them)")
        raise AnimaError(f"no versions of {name} match ({'; '.join(why) or 'no filter'}); "
                         f"{name} has {len(all_versions)} version(s)")
    return out


def score_candidates(cands: Sequence[Candidate], sets: Mapping[str, EvalSet], tracking: Any, *,
                     batch_size: int = 8, cache: bool = True, write_cache: bool = True,
                     on_progress: Any = None) -> None:
    """Fill each candidate's ``scores`` (perplexity per set): from ``ppl.<fp>`` tags, else by loading the model
    once and scoring every missing set (then tagging the version, so the next ranking is free)."""
    from anima.evaluation.perplexity import score_model_dir

    for cand in cands:
        missing = {}
        for name, es in sets.items():
            val = cand.tags.get(es.tag) if cache else None
            if val is not None:
                try:
                    cand.scores[name], cand.cached[name] = float(val), True
                    continue
                except ValueError:
                    pass
            missing[name] = es
        if not missing:
            continue
        if on_progress:
            on_progress(cand)
        path = cand.local_path(tracking)
        try:
            scores = score_model_dir(path, missing, batch_size)
        except ModelError as e:
            raise ModelError(f"{cand.uri}: {e}") from None
        for name, ppl in scores.items():
            cand.scores[name], cand.cached[name] = ppl, False
            if write_cache and cand.version and cand.name:
                store_score(cand, sets[name].tag, ppl)


def store_score(cand: Candidate, key: str, value: float) -> None:
    """Cache a perplexity as the version tag ``key`` (``ppl.<fingerprint>``), exactly (repr round-trips), so a
    cached score compares equal to the same model measured again."""
    text = "inf" if math.isinf(value) else repr(float(value))
    tag_version(cand.name, cand.version, {key: text})
    cand.tags[key] = text
