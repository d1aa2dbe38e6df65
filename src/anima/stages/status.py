"""anima status: what exists in this project: datasets, recent runs, registered models."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig

from anima.config.groups import PathsConfig
from anima.config.stage_schemas import StatusConfig
from anima.config.typed import typed


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def dataset_rows(paths: PathsConfig) -> list[tuple[str, str, str, str]]:
    """(name, fingerprint, size, contents) of every built dataset and token cache under `paths`."""
    rows = []
    processed = Path(paths.processed_dir)
    for manifest in sorted(processed.glob("*/*/manifest.json")):
        info = json.loads(manifest.read_text())
        counts = info.get("counts", {}).get("out") or info.get("splits") or ""
        rows.append((manifest.parent.parent.name, manifest.parent.name, _human(_size(manifest.parent)),
                     json.dumps(counts)[:60]))
    tokens = Path(paths.cache_dir) / "tokens"
    for meta in sorted(tokens.glob("*/meta.json")):
        info = json.loads(meta.read_text())
        split = info["splits"]
        rows.append(("(tokens)", meta.parent.name, _human(_size(meta.parent)),
                     f"train {split['train']['n_tokens']:,} / val {split['val']['n_tokens']:,} tokens"))
    return rows


def run(cfg: DictConfig) -> None:
    """Print the tables; `cfg` is converted once to `StatusConfig` (status logs no run)."""
    import mlflow
    from mlflow import MlflowClient
    from rich.console import Console
    from rich.table import Table

    from anima.tracking.store import setup_mlflow

    spec = typed(cfg, StatusConfig)
    console = Console()
    datasets = Table(title="Datasets", title_justify="left")
    for col in ("name", "fingerprint", "size", "contents"):
        datasets.add_column(col)
    for row in dataset_rows(spec.paths):
        datasets.add_row(*row)
    console.print(datasets)

    exp_id = setup_mlflow(spec.tracking)
    from anima.tracking.liveness import mark_dead_runs

    mark_dead_runs()  # a run whose process was killed shows KILLED here, not RUNNING forever
    runs = mlflow.search_runs([exp_id], order_by=["attributes.start_time DESC"], max_results=spec.limit,
                              output_format="list")
    table = Table(title=f"Recent runs ({spec.tracking.uri})", title_justify="left")
    for col in ("started", "stage", "status", "run id", "metrics"):
        table.add_column(col)
    for r in runs:
        metrics = {k: v for k, v in r.data.metrics.items() if k.startswith(("val/", "persona/", "eval/", "best"))}
        shown = "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())[:4])
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.info.start_time / 1000))
        color = {"FINISHED": "green", "FAILED": "red", "KILLED": "yellow"}.get(r.info.status, "cyan")
        table.add_row(started, r.data.tags.get("anima.stage", "?"), f"[{color}]{r.info.status}[/]",
                      r.info.run_id[:12], shown)
    console.print(table)

    client = MlflowClient()
    models = Table(title="Registered models", title_justify="left")
    for col in ("name", "versions", "latest", "aliases"):
        models.add_column(col)
    for m in client.search_registered_models():
        versions = client.search_model_versions(f"name='{m.name}'")
        latest = max((int(v.version) for v in versions), default=0)
        aliases = ", ".join(f"@{a}→v{v}" for a, v in sorted(m.aliases.items())) or "-"
        models.add_row(m.name, str(len(versions)), f"v{latest}", aliases)
    console.print(models)
