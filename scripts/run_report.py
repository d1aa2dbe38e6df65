"""Print one line per training/eval run of an anima project: stage, registered model, tokens/s, peak GPU
memory and val loss, read back from its MLflow store (scripts/gpu_check.sh's summary).

    ANIMA_ROOT=<project> python scripts/run_report.py [--experiment anima]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def report_rows(tracking_uri: str, experiment: str) -> list[dict]:
    """Oldest first: {stage, run, name, precision, tokens_per_s, peak_mem_gb, val_loss, trainable}."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    rows = []
    for run in reversed(client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])):
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        peaks = [h.value for h in client.get_metric_history(run.info.run_id, "train/peak_mem_gb")]
        rows.append({"stage": t.get("anima.stage") or t.get("stage") or run.info.run_name,
                     "run": run.info.run_id[:8], "name": run.info.run_name,
                     "precision": p.get("device.precision_used", "-"),
                     "tokens_per_s": m.get("train/tokens_per_s"), "peak_mem_gb": max(peaks) if peaks else None,
                     "val_loss": m.get("val/loss"), "trainable": p.get("model.n_trainable_parameters", "-")})
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="anima")
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("ANIMA_ROOT") or "."))
    a = ap.parse_args(argv)
    uri = f"sqlite:///{a.root.resolve()}/mlruns/mlflow.db"
    rows = report_rows(uri, a.experiment)
    print(f"{'stage':<10} {'run':<9} {'precision':<11} {'tokens/s':>10} {'peak GiB':>9} {'val loss':>9} "
          f"{'trainable':>10}  name")
    for r in rows:
        print(f"{r['stage']:<10} {r['run']:<9} {r['precision']:<11} {_fmt(r['tokens_per_s'], ',.0f'):>10} "
              f"{_fmt(r['peak_mem_gb'], '.2f'):>9} {_fmt(r['val_loss'], '.4f'):>9} {r['trainable']:>10}  {r['name']}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
