"""The end of a pipeline: which model is the champion, how good it is, and what to type next."""

from __future__ import annotations

import re
from typing import Any

from anima.config.pipeline import PipelineStageConfig
from anima.tracking.registry import model_uri

MODEL_VERSION = re.compile(r"^models:/([^/@]+)/(\d+)$")
SHOWN_PREFIXES = ("val/", "persona/", "eval/", "test/")


def _registry_name(spec: PipelineStageConfig, outcomes: list) -> str | None:
    if spec.registry_name:
        return spec.registry_name
    for o in reversed(outcomes):
        if o.outputs.get("registered_name"):
            return str(o.outputs["registered_name"])
        m = MODEL_VERSION.match(str(o.outputs.get("model_uri") or ""))
        if m:
            return m.group(1)
    return None


def champion_summary(spec: PipelineStageConfig, outcomes: list) -> dict[str, Any] | None:
    """{uri, alias_uri, name, version, metrics, run_id} of the alias's model, else of the last model produced."""
    from mlflow import MlflowClient

    client = MlflowClient()
    name = _registry_name(spec, outcomes)
    alias = spec.champion_alias or "champion"
    mv = None
    if name:
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except Exception:
            mv = None
    if mv is None:
        last = next((o.outputs["model_uri"] for o in reversed(outcomes) if o.outputs.get("model_uri")), None)
        m = MODEL_VERSION.match(str(last or ""))
        if m is None:
            return {"uri": last, "alias_uri": None, "metrics": {}} if last else None
        mv = client.get_model_version(m.group(1), m.group(2))
        alias_uri = None
    else:
        alias_uri = model_uri(name, alias=alias)
    metrics: dict[str, float] = {}
    for k in ("val_ppl", "persona_ppl", "val_bpc"):
        v = (mv.tags or {}).get(k)
        try:
            if v not in (None, "", "None"):
                metrics[k] = float(v)
        except ValueError:
            pass
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            metrics.update({k: v for k, v in run.data.metrics.items() if k.startswith(SHOWN_PREFIXES)})
        except Exception:
            pass
    return {"uri": model_uri(mv.name, mv.version), "alias_uri": alias_uri, "name": mv.name,
            "version": str(mv.version), "stage": (mv.tags or {}).get("stage"), "metrics": metrics,
            "run_id": mv.run_id}


def print_report(console: Any, spec: PipelineStageConfig, result: Any, champ: dict[str, Any] | None,
                 seconds: float) -> None:
    ran = [o.step + (" (resumed)" if o.status == "resumed" else "") for o in result.steps
           if o.status in ("ran", "resumed")]
    cached = [o.step for o in result.steps if o.status == "cached"]
    console.print(f"\n[bold green]✓ pipeline {spec.pipeline.name}[/] finished in {seconds / 60:.1f} min "
                  f"(run {result.run_id}): ran {', '.join(ran) or 'nothing'}; reused {', '.join(cached) or 'nothing'}")
    if champ:
        head = champ["alias_uri"] + " = " + champ["uri"] if champ.get("alias_uri") else champ["uri"]
        console.print(f"  champion: [bold]{head}[/]" + (f" (from {champ['stage']})" if champ.get("stage") else ""))
        shown = sorted(champ["metrics"].items())[:10]
        if shown:
            console.print("  metrics:  " + "  ".join(f"{k}={v:.4g}" for k, v in shown))
        target = champ.get("alias_uri") or champ["uri"]
        console.print(f"  chat:     anima chat model={target}")
        console.print(f"  serve:    anima serve model={target}")
    console.print("  compare:  anima ui      (MLflow UI on http://127.0.0.1:5000; the pipeline run holds each step "
                  "as a child run)")
