"""Built datasets: what training stages consume by name. `ensure_dataset` reuses or builds; `load_dataset_ref`
finds an earlier build ("name" = latest, "name/fingerprint").

    spec = typed(cfg, DataStageConfig)                           # once, at the stage boundary
    ds = ensure_dataset(spec.data, spec.paths, spec.tracking)    # data/processed/<name>/<fingerprint>/
    ds.fingerprint, ds.manifest["counts"], ds.split("train"), ds.split("persona_val")

The functions take the typed groups (`DataConfig`, `PathsConfig`, `TrackingConfig`), not raw DictConfigs.

An example: {"id", "messages": [{"role", "content"}...], "source", "domain", "persona", "score"} (chat) or
{"id", "text", "source", "domain"} (kind=text).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from anima.config.data import DataConfig
from anima.config.groups import PathsConfig, TrackingConfig
from anima.config.typed import plain_dict, typed
from anima.data.manifest import (
    fingerprint,
    get_latest,
    iter_jsonl,
    publish,
    set_latest,
    shard_paths,
    source_content_hash,
    staging_dir,
)
from anima.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test", "persona_train", "persona_val")
DEMO_KINDS = ("plays", "persona_pairs", "chatterbot")


@dataclass
class BuiltDataset:
    name: str
    fingerprint: str
    path: Path  # data/processed/<name>/<fingerprint>/
    manifest: dict
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "chat"))

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.fingerprint}"

    def iter_split(self, split: str) -> Iterator[dict]:
        """Stream a split's examples from its shards (for text datasets larger than memory)."""
        if split not in SPLIT_NAMES:
            raise DataError(f"unknown split {split!r}; one of {', '.join(SPLIT_NAMES)}")
        if split.startswith("persona_"):
            for ex in iter_jsonl(shard_paths(self.path, split.split("_", 1)[1])):
                if ex.get("persona"):
                    yield ex
            return
        yield from iter_jsonl(shard_paths(self.path, split))

    def split(self, split: str) -> list[dict]:
        """All examples of "train" | "val" | "test" | "persona_train" | "persona_val" (cached)."""
        if split not in self._cache:
            self._cache[split] = list(self.iter_split(split))
        return self._cache[split]

    def count(self, split: str) -> int:
        return int(self.manifest.get("counts", {}).get("out", {}).get(split, 0))


def _open(path: Path) -> BuiltDataset:
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    return BuiltDataset(str(manifest.get("name", path.parent.name)), path.name, path, manifest)


def load_dataset_ref(ref: str, paths_cfg: PathsConfig) -> BuiltDataset:
    """"name" (its latest build) or "name/fingerprint" under paths.processed_dir."""
    processed = Path(paths_cfg.processed_dir)
    ref = ref.strip().strip("/")
    name, _, fp = ref.partition("/")
    name_dir = processed / name
    if not fp:
        fp = get_latest(name_dir) or ""
        if not fp:
            built = sorted(p.parent.parent.name for p in processed.glob("*/*/manifest.json"))
            raise DataError(f"dataset {name!r} has no build under {processed}; build it with "
                            f"`anima data data={name}` (built: {', '.join(sorted(set(built))) or 'none'})")
    path = name_dir / fp
    if not (path / "manifest.json").is_file():
        have = sorted(p.parent.name for p in name_dir.glob("*/manifest.json"))
        raise DataError(f"dataset {ref!r}: no build {fp} under {name_dir} (builds: {', '.join(have) or 'none'})")
    return _open(path)


def find_fingerprint(fp: str, paths_cfg: PathsConfig) -> BuiltDataset | None:
    hits = sorted(Path(paths_cfg.processed_dir).glob(f"*/{fp}/manifest.json"))
    return _open(hits[0].parent) if hits else None


def resolve_rehearsal(ref: str, paths_cfg: PathsConfig, tracking_cfg: TrackingConfig | None = None
                      ) -> BuiltDataset:
    """A dataset name, name/fingerprint, or a models:/ (runs:/) URI whose training run recorded the
    `anima.data_fingerprint` tag. A bare name with no build yet is built from conf/data/<name>.yaml."""
    ref = ref.strip()
    if ref.startswith(("models:/", "runs:/")):
        from anima.model.resolve import resolve_model

        resolved = resolve_model(ref, tracking_cfg)
        if not resolved.run_id:
            raise DataError(f"data.rehearsal.source={ref}: the model has no training run to read its data from")
        import mlflow

        run = mlflow.get_run(resolved.run_id)
        tags = run.data.tags
        fp = tags.get("anima.data_fingerprint")
        if not fp:
            raise DataError(f"data.rehearsal.source={ref}: run {resolved.run_id} has no anima.data_fingerprint tag")
        found = find_fingerprint(fp, paths_cfg)
        if found is None and run.data.params.get("data.kind") == "text":
            # a pretrained model's fingerprint is its token cache: there is no dataset to rebuild
            raise DataError(f"data.rehearsal.source={ref}: its {tags.get('anima.stage', 'training')} run "
                            f"{resolved.run_id} trained on plain text (data.kind=text), not on a chat dataset")
        if found is None:
            raise DataError(f"data.rehearsal.source={ref}: its training data (fingerprint {fp}) is not a dataset "
                            f"under {paths_cfg.processed_dir} (rebuild it with `anima data`)")
        return found
    try:
        return load_dataset_ref(ref, paths_cfg)
    except DataError:
        if "/" in ref:
            raise
        preset = _preset(ref, paths_cfg)
        if preset is None:
            raise
        print(f"anima: building rehearsal dataset {ref!r} from conf/data/{ref}.yaml (once)")
        return ensure_dataset(typed(preset, DataConfig), paths_cfg, tracking_cfg)


def _preset(name: str, paths_cfg: PathsConfig) -> Any:
    """data/<name>.yaml (user config dir or conf/) composed with the same paths: its `data` group as a
    DictConfig (the pipeline reads its sources from it), None when there is none."""
    from anima.paths import conf_dir, user_conf_dir

    if not any((d / "data" / f"{name}.yaml").is_file() for d in (user_conf_dir(), conf_dir())):
        return None
    from anima.config.compose import compose

    cfg = compose("data", [f"data={name}", f"paths.raw_dir={paths_cfg.raw_dir}",
                           f"paths.processed_dir={paths_cfg.processed_dir}"])
    return cfg.data


def plan_build(data_cfg: DataConfig, paths_cfg: PathsConfig, tracking_cfg: TrackingConfig | None = None):
    """Resolve everything the fingerprint depends on; checks config before any reading."""
    from anima.data.build import BuildPlan
    from anima.data.mixing import check_weights
    from anima.data.readers import source_files
    from anima.data.text_corpus import _ensure_demo

    if not data_cfg.sources:
        raise ConfigError(f"data.sources: dataset {data_cfg.name!r} has no sources")
    check_weights(data_cfg.sources)
    split = data_cfg.split
    if split.val + split.test >= 1:
        raise ConfigError(f"data.split.val + data.split.test = {split.val + split.test} must be < 1")
    if data_cfg.persona is not None and data_cfg.persona not in data_cfg.sources:
        raise ConfigError(f"data.persona={data_cfg.persona}: not a source name "
                          f"(sources: {', '.join(data_cfg.sources.keys())})")
    if data_cfg.kind == "text" and data_cfg.rehearsal.ratio > 0:
        raise ConfigError("data.rehearsal.ratio: rehearsal mixes chat datasets only (data.kind=chat)")
    raw_dir = Path(paths_cfg.raw_dir)
    hashes: dict[str, str] = {}
    for name, src in data_cfg.sources.items():
        if src.kind in DEMO_KINDS and not any(c in src.path for c in "*?["):
            _ensure_demo(Path(src.path), raw_dir)  # the demo corpora are fetched on first use
        files = source_files(name, src)
        hashes[name] = source_content_hash(files, f"{src.path}:{src.split}:{dict(src.options or {})}")
    extras: dict[str, Any] = {}
    rehearsal = None
    ref = data_cfg.rehearsal.source
    if data_cfg.rehearsal.ratio > 0:
        if not ref:
            raise ConfigError("data.rehearsal.source: set it (dataset name, name/fingerprint or models:/ URI) "
                              "when data.rehearsal.ratio > 0")
        rehearsal = resolve_rehearsal(ref, paths_cfg, tracking_cfg)
        if rehearsal.kind != "chat":
            raise ConfigError(f"data.rehearsal.source={ref}: {rehearsal.ref} is a {rehearsal.kind} dataset, not chat")
        extras["rehearsal"] = rehearsal.fingerprint
    scorer_uri = None
    if data_cfg.filter.model:
        from anima.model.resolve import resolve_model

        scorer_uri = resolve_model(data_cfg.filter.model, tracking_cfg).canonical_uri
        from anima.fingerprint import hash_files

        extras["filter_model"] = scorer_uri
        extras["filter_weights"] = hash_files(sorted(resolve_model(data_cfg.filter.model, tracking_cfg)
                                                     .path.glob("*.safetensors")))
    fp = fingerprint(plain_dict(data_cfg), hashes, extras)
    return BuildPlan(fp, hashes, rehearsal, rehearsal.ref if rehearsal else None, scorer_uri, tracking_cfg)


def ensure_dataset(data_cfg: DataConfig, paths_cfg: PathsConfig, tracking_cfg: TrackingConfig | None = None
                   ) -> BuiltDataset:
    """The dataset `data_cfg` describes: reused when its fingerprint is already built, else built in a
    staging folder and renamed into place (nothing half-written is ever visible)."""
    from anima.data.build import build_dataset

    plan = plan_build(data_cfg, paths_cfg, tracking_cfg)
    name = data_cfg.name
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"data.name={name!r}: must be a plain folder name")
    name_dir = Path(paths_cfg.processed_dir) / name
    final = name_dir / plan.fingerprint
    if (final / "manifest.json").is_file():
        set_latest(name_dir, plan.fingerprint)
        ds = _open(final)
        ds.manifest["reused"] = True
        return ds
    tmp = staging_dir(final)
    try:
        build_dataset(data_cfg, plan, tmp, plain_dict(data_cfg))
        publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    set_latest(name_dir, plan.fingerprint)
    ds = _open(final)
    ds.manifest["reused"] = False
    return ds
