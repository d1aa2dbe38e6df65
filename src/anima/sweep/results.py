"""What a sweep leaves behind: best value and params on the parent run, PNG plots, the best trial as an
experiment preset (one command reproduces it), and the top-k trial models registered for `anima merge`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from anima.atomic import PRIVATE, atomic_write_text
from anima.config.sweep import SweepConfig
from anima.sweep.objective import SweepContext


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    for t in study.get_trials(deepcopy=False):
        key = t.state.name.lower()
        out[key] = out.get(key, 0) + 1
    return out


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return sorted(done, key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)


def log_best(study: optuna.Study, best: FrozenTrial | None) -> None:
    """On the active (parent) run: trial counts, best value, best params (`best.<key>`), best trial number."""
    import mlflow

    mlflow.log_metrics({f"trials_{k}": float(v) for k, v in counts(study).items()})
    if best is None:
        return
    mlflow.log_metric("best_value", float(best.value))
    mlflow.log_params({f"best.{k}": str(v)[:500] for k, v in best.params.items()})
    mlflow.set_tags({"anima.sweep.best_trial": str(best.number),
                     "anima.sweep.best_run_id": str(best.user_attrs.get("run_id", ""))})


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """optuna.visualization.matplotlib figures as PNG; a plot that the study cannot support yet is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "intermediate_values": ovm.plot_intermediate_values,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
    }
    written: list[Path] = []
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            path = out / f"{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
        except Exception:  # e.g. importances need 2+ finished trials with varying params
            plt.close("all")
    return written


def _group_override(key: str) -> bool:
    from anima.sweep.space import is_group

    return is_group(key)


def preset_text(ctx: SweepContext, best: FrozenTrial, stage: str) -> str:
    """`# @package _global_` preset: group choices as `override /group: option`, keys as nested YAML."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(list(best.user_attrs.get("overrides", [])))
    groups: dict[str, str] = {}
    values = OmegaConf.create({})
    for o in parsed:
        if o.is_delete():
            continue
        key = o.key_or_group
        if _group_override(key):
            groups[key] = str(o.value())
        else:
            OmegaConf.update(values, key, o.value(), merge=True, force_add=True)
    lines = [
        "# @package _global_",
        f"# Best trial of sweep study {ctx.study_name}: trial {best.number}, {ctx.sweep.metric}={best.value:.6g} "
        f"({ctx.sweep.direction}).",
        f"# Reproduce: anima {stage} +experiment=sweeps/{ctx.study_name}-best",
        f"# Trial run: runs:/{best.user_attrs.get('run_id', '?')}/model",
    ]
    if groups:
        lines.append("defaults:")
        lines += [f"  - override /{g}: {c}" for g, c in groups.items()]
        lines.append("  - _self_")
    body = OmegaConf.to_container(values)
    if body:
        lines.append(yaml.safe_dump(body, sort_keys=False, default_flow_style=False).rstrip())
    return "\n".join(lines) + "\n"


def preset_dir(sweep: SweepConfig) -> Path:
    """`sweep.preset_dir`, else `<user conf dir>/experiment/sweeps`: on Hydra's search path (so
    `+experiment=sweeps/<study>-best` works) but outside the tracked `conf/`, so a sweep leaves the checkout clean."""
    from anima.paths import user_conf_dir

    return Path(sweep.preset_dir) if sweep.preset_dir else user_conf_dir() / "experiment" / "sweeps"


def write_preset(ctx: SweepContext, best: FrozenTrial) -> Path:
    """<preset dir>/<study>-best.yaml, written atomically."""
    folder = preset_dir(ctx.sweep)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ctx.study_name}-best.yaml"
    return atomic_write_text(path, preset_text(ctx, best, ctx.sweep.stage), mode=PRIVATE)


def _registered(name: str, study: str) -> dict[int, str]:
    """Trials of this study already registered under `name` (another worker or an earlier run did it)."""
    from mlflow import MlflowClient

    out: dict[int, str] = {}
    try:
        for mv in MlflowClient().search_model_versions(f"name='{name}'"):
            if mv.tags.get("sweep_study") == study and mv.tags.get("sweep_trial", "").isdigit():
                out[int(mv.tags["sweep_trial"])] = str(mv.version)
    except Exception:
        pass
    return out


def register_top_k(ctx: SweepContext, trials: Sequence[FrozenTrial]) -> list[str]:
    """Register the k best trials' logged models (from their run artifacts) with lineage + sweep tags."""
    from mlflow import MlflowClient

    from anima.tracking.registry import metric_tags, model_uri, register_model

    client = MlflowClient()
    uris: list[str] = []
    for rank, t in enumerate(trials[: ctx.sweep.top_k], start=1):
        run_id, name = t.user_attrs.get("run_id"), t.user_attrs.get("registered_name")
        if not run_id or not name:
            continue
        done = _registered(name, ctx.study_name)
        if t.number in done:
            uris.append(model_uri(name, done[t.number]))
            continue
        run = client.get_run(run_id)
        m, tags = run.data.metrics, run.data.tags
        mv = register_model(name, run_id, f"{run.info.artifact_uri}/model", {
            "stage": tags.get("anima.stage"), **metric_tags(m), "data_fingerprint": tags.get("anima.data_fingerprint"),
            "config_hash": tags.get("anima.config_hash"), "parent": tags.get("anima.parent") or None,
            "sweep_study": ctx.study_name, "sweep_trial": t.number, "sweep_rank": rank,
            "sweep_metric": ctx.sweep.metric, "sweep_value": t.value,
        }, description=f"sweep {ctx.study_name} trial {t.number}: {ctx.sweep.metric}={t.value:.6g}")
        uris.append(mv.uri)
    return uris


def trials_table(study: optuna.Study, path: Path) -> Path | None:
    try:
        df = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    except Exception:
        return None
    df.to_csv(path, index=False)
    return path
