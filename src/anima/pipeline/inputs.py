"""What a step reads from disk, fingerprinted by content: the part of the cache key a config hash cannot see.

A config names its inputs by location (`data.sources.emotion.path=.../emotion.yml`, `init_from=/my/model`);
the bytes behind a location can change in place. Each input found in a step's composed config becomes
`label -> {path, fp}`:

  data source <dataset>.sources.<source>    the files the source's reader opens (`readers.source_files`)
  rehearsal source <preset>.sources.<src>   the sources of a rehearsal dataset named by a conf/data preset
  rehearsal dataset <name>                  else the build `latest` points at (its fingerprint is its content)
  feedback file                             retrain.feedback (the chat feedback file)
  tokenizer                                 tokenizer.path (a trained tokenizer dir); without it the
                                            tokenizer is trained from the data sources, already covered
  local model <key>                         a model given as a local directory (init_from, teacher,
                                            model.path, merge.models, eval's model, synth's teacher, ...)
  prompts file <key>                        synth.prompts, distill.prompts, eval.data given as files
  trial ...                                 a sweep step: the same, for the config every trial composes

Registry references are not here: `models:/name/N` and `runs:/` are immutable, and a moving alias is
resolved to its version by `cache.moving_aliases`. Fingerprints hash bytes (memoised per file by size and
mtime within one process, `anima.fingerprint.file_digest`), never mtimes or paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from anima.config.data import DataConfig, SourceConfig
from anima.config.groups import PathsConfig
from anima.config.sweep import SweepConfig
from anima.config.typed import plain_dict, typed
from anima.fingerprint import hash_obj, hash_paths, hash_tree

MISSING = "missing"
REGISTRY_PREFIXES = ("models:/", "runs:/", "hf:", "http://", "https://")
# dotted key (`*` = every list item) -> label prefix. A value is an input only when it names a local path.
LOCAL_KEYS = {
    "init_from": "local model",
    "teacher": "local model",
    "model": "local model",
    "model.path": "local model",
    "teacher.path": "local model",
    "merge.models.*": "local model",
    "merge.base": "local model",
    "data.filter.model": "local model",
    "eval.compare": "local model",
    "compare": "local model",
    "tokenizer.path": "tokenizer",
    "retrain.feedback": "feedback file",
    "synth.prompts": "prompts file",
    "distill.prompts": "prompts file",
    "eval.data": "prompts file",
}
_PRESETS: dict[tuple[str, str, str], Any] = {}  # composed conf/data presets (a compose costs ~0.2-2 s)
SINGLE_LABELS = ("tokenizer", "feedback file")  # labels that name their key implicitly


def content_inputs(stage_cfg: DictConfig, fetch: bool = True) -> dict[str, dict[str, str]]:
    """label -> {"path", "fp"} for everything the step reads from local disk. `fetch=False` (dry run): never
    download the demo corpora, a source not fetched yet is `missing`."""
    out: dict[str, dict[str, str]] = {}
    _collect(stage_cfg, "", out, fetch)
    if stage_cfg.get("stage") == "sweep":
        trial = _trial_config(stage_cfg)
        if trial is not None:
            _collect(trial, "trial ", out, fetch)
    return out


def fingerprints(inputs: dict[str, dict[str, str]]) -> dict[str, str]:
    """label -> fp: what goes into the cache key (paths are not content)."""
    return {k: v["fp"] for k, v in sorted(inputs.items())}


def _collect(cfg: DictConfig, prefix: str, out: dict[str, dict[str, str]], fetch: bool) -> None:
    data = cfg.get("data") if "data" in cfg else None
    if isinstance(data, DictConfig) and "sources" in data:
        paths = typed(cfg.paths, PathsConfig) if "paths" in cfg else None
        _data_sources(typed(data, DataConfig), paths, prefix, out, fetch)
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key, label in LOCAL_KEYS.items():
        for where, value in _values(plain, key.split(".")):
            path = _local_path(value)
            if path is None:
                continue
            name = f"{prefix}{label}" if label in SINGLE_LABELS else f"{prefix}{label} {where}"
            out[name] = {"path": str(path), "fp": hash_tree(path) if path.exists() else MISSING}


def _values(node: Any, parts: list[str], where: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for a key pattern in a plain config (`*` expands list items)."""
    if not parts:
        yield where, node
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        if isinstance(node, list):
            for i, item in enumerate(node):
                yield from _values(item, rest, f"{where}[{i}]")
        return
    if isinstance(node, dict) and head in node:
        yield from _values(node[head], rest, f"{where}.{head}" if where else head)


def _local_path(value: Any) -> Path | None:
    """The local path a config value names, or None (not a string, a registry URI, a dataset name)."""
    from anima.pipeline.refs import is_placeholder

    if not isinstance(value, str) or not value.strip() or value.startswith(REGISTRY_PREFIXES) \
            or is_placeholder(value):
        return None
    p = Path(value).expanduser()
    if p.exists() or value.startswith(("/", "./", "../", "~")):
        return p.resolve() if p.exists() else p
    return None


def _data_sources(data: DataConfig, paths: PathsConfig | None, prefix: str, out: dict[str, dict[str, str]],
                  fetch: bool, label: str = "data source") -> None:
    """The files behind each source of `data`; `paths` (the step's) locates the demo corpora and the
    rehearsal datasets, None when the config has no paths."""
    from anima.data.readers import source_files

    name = data.name or "data"
    for src_name, src in data.sources.items():
        where = f"{prefix}{label} {name}.sources.{src_name}"
        if fetch and paths is not None:
            _fetch_demo(src, Path(paths.raw_dir))
        try:
            files = source_files(src_name, src)
        except Exception:  # noqa: BLE001 - a missing source fails the step itself, with its own message
            files = None
        if files is None:
            fp = MISSING
        elif not files:  # a Hub dataset name: its identity is the name (+ split/options, in the config hash)
            fp = hash_obj({"remote": src.path})
        else:
            import os

            root = Path(os.path.commonpath([str(f.parent) for f in files]))
            fp = hash_paths(files, root=root)
        out[where] = {"path": src.path, "fp": fp}
    rehearsal = data.rehearsal
    if rehearsal.ratio > 0 and rehearsal.source:
        _rehearsal(rehearsal.source, paths, prefix, out, fetch)


def _fetch_demo(src: SourceConfig, raw_dir: Path) -> None:
    """The demo corpora are fetched on first use by the step itself; fetch them first so that the key of the
    first run already holds their content (else the second invocation would see a changed input)."""
    from anima.data.dataset import DEMO_KINDS
    from anima.data.text_corpus import _ensure_demo

    if src.kind in DEMO_KINDS and not any(c in src.path for c in "*?["):
        try:
            _ensure_demo(Path(src.path), raw_dir)
        except Exception:  # noqa: BLE001 - offline: the step reports it
            pass


def _rehearsal(ref: str, paths: PathsConfig, prefix: str, out: dict[str, dict[str, str]], fetch: bool) -> None:
    """A rehearsal dataset by name: the sources of its conf/data preset (how it is built on first use), else the
    build `latest` points at. `name/fingerprint` and registry URIs are content-addressed already."""
    if ref.startswith(REGISTRY_PREFIXES) or "/" in ref:
        return
    from anima.data.dataset import _preset
    from anima.data.manifest import get_latest

    memo_key = (ref, paths.raw_dir, paths.processed_dir)
    if memo_key not in _PRESETS:
        try:
            preset = _preset(ref, paths)
            _PRESETS[memo_key] = None if preset is None else typed(preset, DataConfig)
        except Exception:  # noqa: BLE001 - a broken preset fails the step with its own message
            _PRESETS[memo_key] = None
    preset = _PRESETS[memo_key]
    if preset is not None:
        _data_sources(preset, paths, prefix, out, fetch, label="rehearsal source")
        return
    name_dir = Path(paths.processed_dir) / ref
    out[f"{prefix}rehearsal dataset {ref}"] = {"path": str(name_dir), "fp": get_latest(name_dir) or MISSING}


def _trial_config(cfg: DictConfig) -> DictConfig | None:
    """The config every trial of a sweep step shares (its base overrides, no searched values; not validated:
    only a trial, with its values, has to be valid)."""
    from anima.config.compose import compose
    from anima.sweep.objective import base_overrides
    from anima.tracking.run import flatten

    paths = flatten({"paths": plain_dict(cfg.paths)})
    sweep = typed(cfg.sweep, SweepConfig)
    try:
        return compose(sweep.stage, [f"{k}={v}" for k, v in paths.items()] + base_overrides(sweep), validate=False)
    except Exception:  # noqa: BLE001 - the sweep step reports a bad trial config itself
        return None
