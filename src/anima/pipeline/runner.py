"""Run the steps in order: compose, check the cache, run (as a child of the pipeline run) or reuse, record."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anima.config.pipeline import PipelineStageConfig
from anima.errors import AnimaError, ConfigError
from anima.pipeline import cache, refs
from anima.pipeline.spec import Step, forced, parse_steps, pipeline_spec, propagated, to_override_list


@dataclass
class StepOutcome:
    step: str
    stage: str
    status: str  # ran | resumed | cached | failed | planned
    run_id: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


@dataclass
class PipelineResult:
    run_id: str | None
    steps: list[StepOutcome]
    champion: dict[str, Any] | None = None


def step_overrides(spec: PipelineStageConfig, step: Step, outputs: dict[str, dict[str, Any]]) -> list[str]:
    """The command line of `anima <stage>` this step amounts to: pipeline-wide keys, then the step's own."""
    own = {k: refs.substitute(v, outputs, f"{step.name}.{k}") for k, v in step.overrides.items()}
    groups = {k.lstrip("+~").split(".")[0] for k in own}
    base = {k: v for k, v in propagated(spec).items() if k.split(".")[0] not in groups and k not in own}
    if "run_name" not in groups:  # the step's MLflow run reads `<pipeline>/<step>` (demo/sft)
        base["run_name"] = step_run_name(spec, step)
    return to_override_list(base) + to_override_list(own)


def step_run_name(spec: PipelineStageConfig, step: Step) -> str:
    return f"{spec.pipeline.name}/{step.name}"


def compose_step(step: Step, overrides: list[str]) -> DictConfig:
    """The step's config, composed and validated as `anima <stage> <overrides>` would be."""
    from anima.config.compose import compose

    try:
        cfg = compose(step.config_name, overrides)
    except ConfigError as e:
        raise ConfigError(f"step {step.name} ({step.stage}): {e}") from None
    return cfg


def _start_parent(cfg: DictConfig, spec: PipelineStageConfig, exp_id: str, steps: list[Step]) -> str:
    """The pipeline's own run, created through the client so that no fluent run is active while steps run;
    `cfg` (raw) is what its params, config.yaml and config hash are logged from."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from anima.paths import project_root
    from anima.tracking.gitinfo import git_state
    from anima.tracking.liveness import process_tags
    from anima.tracking.context import current
    from anima.tracking.redact import redact
    from anima.tracking.run import config_hash, flatten, resolved_config

    overrides = list(current().overrides)
    sha, dirty = git_state(project_root())
    name = spec.run_name or f"pipeline-{spec.pipeline.name}"
    client = MlflowClient()
    run = client.create_run(exp_id, run_name=name, tags={**process_tags(),
        "anima.stage": "pipeline", "anima.command": shlex.join(["anima", "pipeline", *redact({"o": overrides})["o"]]),
        "anima.config_hash": config_hash(cfg), "mlflow.source.git.commit": sha, "anima.git_dirty": str(dirty).lower(),
        "anima.pipeline.name": spec.pipeline.name, "anima.pipeline.stages": " ".join(s.name for s in steps),
        "mlflow.note.content": spec.pipeline.description,
    })
    run_id = run.info.run_id
    data = redact(resolved_config(cfg))
    params = [Param(k, str(v)[:500]) for k, v in flatten(data).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    client.log_text(run_id, OmegaConf.to_yaml(OmegaConf.create(data)), "config.yaml")
    client.log_text(run_id, "\n".join(overrides) + "\n", "overrides.txt")
    return run_id


class Runner:
    def __init__(self, cfg: DictConfig, console: Any = None):
        """`cfg`, the composed pipeline config, is converted once to `PipelineStageConfig` (`self.spec`); the
        raw one stays for what needs it: the steps' overrides (keys outside the schema) and the parent run's
        logged config and hash."""
        from rich.console import Console

        self.cfg = cfg
        self.spec = pipeline_spec(cfg)
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.steps = parse_steps(self.spec, OmegaConf.to_container(cfg, resolve=False))
        self._ran: list[str] = []  # steps that ran in this invocation (the reason a later step's key differs)

    def preflight(self) -> None:
        """Compose every step with stand-ins for outputs not produced yet: a typo fails before any work."""
        stand_ins = refs.placeholder_outputs([s.name for s in self.steps])
        for i, step in enumerate(self.steps):
            earlier = {s.name: stand_ins[s.name] for s in self.steps[:i]}
            compose_step(step, step_overrides(self.spec, step, earlier))

    def run(self) -> PipelineResult:
        from mlflow import MlflowClient

        from anima.pipeline.interrupted import mark_dead
        from anima.tracking.liveness import RunLock
        from anima.tracking.context import stage_output_dir
        from anima.tracking.store import setup_mlflow

        spec, c = self.spec, self.console
        self.preflight()
        exp_id = setup_mlflow(spec.tracking)
        mark_dead(exp_id)  # a pipeline killed -9 earlier (and its step run) end KILLED: its step can be continued
        desc = spec.pipeline.description.strip().splitlines()
        c.print(f"[bold]pipeline {spec.pipeline.name}[/]: {' → '.join(s.name for s in self.steps)}"
                + (f"  — {desc[0]}" if desc else ""))
        if spec.dry_run:
            return self._dry_run(exp_id)
        out_dir = stage_output_dir(spec)
        parent = _start_parent(self.cfg, spec, exp_id, self.steps)
        lock = RunLock(parent, spec.tracking)  # while held, no later command takes this pipeline for dead
        lock.acquire()
        client = MlflowClient()
        outcomes: list[StepOutcome] = []
        outputs: dict[str, dict[str, Any]] = {}
        upstream: dict[str, str] = {}
        status = "FAILED"
        start = time.monotonic()
        try:
            for i, step in enumerate(self.steps, 1):
                outcome = self._step(i, step, exp_id, parent, out_dir, outputs, upstream)
                outcomes.append(outcome)
                client.set_tag(parent, f"anima.pipeline.step.{step.name}", f"{outcome.status} {outcome.run_id}")
                outputs[step.name] = outcome.outputs
                upstream[step.name] = str(outcome.run_id)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            try:
                client.log_text(parent, json.dumps([o.__dict__ for o in outcomes], indent=2, default=str),
                                "pipeline/steps.json")
                client.log_metric(parent, "pipeline/seconds", time.monotonic() - start)
                client.log_metric(parent, "pipeline/steps_run", sum(o.status in ("ran", "resumed") for o in outcomes))
                client.log_metric(parent, "pipeline/steps_cached", sum(o.status == "cached" for o in outcomes))
                client.set_terminated(parent, status)
            finally:
                lock.release()
        result = PipelineResult(parent, outcomes)
        result.champion = self._report(result, time.monotonic() - start)
        return result

    def _key(self, step: Step, stage_cfg: DictConfig, upstream: dict[str, str], fetch: bool
             ) -> tuple[dict[str, Any], str, dict[str, str]]:
        """(key parts, key, label -> path of each content input)."""
        from anima.pipeline.inputs import content_inputs, fingerprints
        from anima.tracking.run import config_hash, resolved_config

        content = content_inputs(stage_cfg, fetch=fetch)
        inputs = cache.inputs_of(config_hash(stage_cfg), upstream, cache.moving_aliases(resolved_config(stage_cfg)),
                                 fingerprints(content))
        return inputs, cache.cache_key(inputs), {k: v["path"] for k, v in content.items()}

    def _why(self, exp_id: str, step: Step, stage_cfg: DictConfig, inputs: dict[str, Any], paths: dict[str, str],
             rerun: set[str]) -> str:
        """One line: what differs from this step's newest finished run (inputs, config keys, earlier steps)."""
        from anima.tracking.run import resolved_config

        prev = cache.previous_run(exp_id, self.spec.pipeline.name, step.name)
        fed = {k.lstrip("+~") for k, v in step.overrides.items() if refs.find_refs(v)}
        why = cache.explain(prev, inputs, paths, resolved_config(stage_cfg), rerun, fed)
        return "; ".join(why) or "the run with this key is gone (its registered model was deleted)"

    def _step(self, i: int, step: Step, exp_id: str, parent: str, out_dir: Path,
              outputs: dict[str, dict[str, Any]], upstream: dict[str, str]) -> StepOutcome:
        from anima.config.catalog import STAGES
        from anima.config.compose import one_line
        from anima.pipeline.context import step_context
        from anima.pipeline.interrupted import PENDING_TAG, RESUMED_TAG, find_interrupted
        from anima.pipeline.outputs import child_run, extract

        c, n = self.console, len(self.steps)
        label = f"[{i}/{n}] {step.name}" + (f" ({step.stage})" if step.stage != step.name else "")
        try:
            overrides = step_overrides(self.spec, step, outputs)
            stage_cfg = compose_step(step, overrides)
        except ConfigError as e:
            raise ConfigError(f"pipeline stopped at step {step.name!r} (stage {step.stage}): {e}") from None
        inputs, key, paths = self._key(step, stage_cfg, upstream, fetch=True)
        h = inputs["config_hash"]
        if forced(self.spec, step.name):
            hit, why_not = None, "forced"
        else:
            hit = cache.find_cached(exp_id, key)
            why_not = "" if hit else self._why(exp_id, step, stage_cfg, inputs, paths, set(self._ran))
        if hit is not None:
            from anima.pipeline.outputs import extract as extract_outputs

            outs = {**extract_outputs(None, hit), **cache.outputs_of_run(hit)}
            shown = outs.get("model_uri") or outs.get("dataset") or ""
            c.print(f"[cyan]↺ {label}: skipped[/] — same config (hash {h}) and inputs as finished run "
                    f"{hit.info.run_id[:12]}" + (f"; reusing {shown}" if shown else ""))
            return StepOutcome(step.name, step.stage, "cached", hit.info.run_id, outs, "cache hit")
        pipeline = self.spec.pipeline.name
        resumed = None if why_not == "forced" else find_interrupted(exp_id, pipeline, step.name, step.stage, key)
        status = "ran"
        if resumed is not None:
            status, why_not = "resumed", f"continuing interrupted run {resumed.info.run_id[:12]}"
            stage_cfg.resume = resumed.info.run_id  # the training stage's resume=<run_id>: last.ckpt, same run
        c.print(f"[bold]▶ {label}[/]: {'resuming' if resumed else 'running'} ({why_not}) — anima {step.stage} "
                + " ".join(o for o in overrides
                           if not o.startswith(("paths.", "tracking.", "device.", "seed=", "run_name="))))
        t0 = time.monotonic()
        extra = {PENDING_TAG: key, **({RESUMED_TAG: "true"} if resumed else {})}
        try:
            with step_context(parent, step.name, out_dir / f"{i:02d}-{step.name}", overrides, pipeline, extra):
                result = STAGES[step.stage].implementation()(stage_cfg)  # validated in compose_step
        except KeyboardInterrupt:
            raise
        except Exception as e:
            done = i - 1
            msg = e if isinstance(e, AnimaError) else f"{type(e).__name__}: {one_line(e)}"
            from mlflow import MlflowClient

            MlflowClient().set_tag(parent, "anima.pipeline.failed_step", step.name)
            raise AnimaError(f"pipeline stopped at step {step.name!r} (stage {step.stage}): {msg} — fix it and run "
                             f"the same command again: the {done} step(s) before it are reused") from e
        run = child_run(parent, step.name, exp_id, result)
        outs = extract(result, run)
        run_id = outs.get("run_id")
        if run_id:
            cache.record(run_id, key, inputs, outs)
        self._ran.append(step.name)
        secs = time.monotonic() - t0
        c.print(f"[green]✓ {label}[/] done in {secs:.0f}s" + (f": {outs['model_uri']}" if outs.get("model_uri") else ""))
        return StepOutcome(step.name, step.stage, status, run_id, outs, why_not, secs)

    def _dry_run(self, exp_id: str) -> PipelineResult:
        """What would run and why. A step after one that re-runs re-runs too; its own changed inputs are still
        listed (composed with stand-ins for the outputs the earlier steps have not produced yet)."""
        outcomes, outputs, upstream = [], {}, {}
        stand_ins = refs.placeholder_outputs([s.name for s in self.steps])
        certain = True
        n = len(self.steps)
        for i, step in enumerate(self.steps, 1):
            earlier = outputs if certain else {**{s.name: stand_ins[s.name] for s in self.steps[:i - 1]}, **outputs}
            stage_cfg = compose_step(step, step_overrides(self.spec, step, earlier))
            inputs, key, paths = self._key(step, stage_cfg, upstream, fetch=False)
            if not certain:
                own = [w for w in self._why(exp_id, step, stage_cfg, inputs, paths, set()).split("; ")
                       if w.startswith(("input", "new input", "config changed"))]
                self.console.print(f"  [{i}/{n}] {step.name}: re-run (an earlier step re-runs"
                                   + "".join(f"; {w}" for w in own) + ")")
                outcomes.append(StepOutcome(step.name, step.stage, "planned", reason="; ".join(own)))
                continue
            force = forced(self.spec, step.name)
            hit = None if force else cache.find_cached(exp_id, key)
            if hit is None:
                certain = False
                why = "forced" if force else self._why(exp_id, step, stage_cfg, inputs, paths, set())
                if not force:
                    from anima.pipeline.interrupted import find_interrupted

                    resumable = find_interrupted(exp_id, self.spec.pipeline.name, step.name, step.stage, key)
                    if resumable is not None:
                        why = f"continues interrupted run {resumable.info.run_id[:12]}; {why}"
                self.console.print(f"  [{i}/{n}] {step.name}: re-run ({why})")
                outcomes.append(StepOutcome(step.name, step.stage, "planned", reason=why))
            else:
                self.console.print(f"  [{i}/{n}] {step.name}: cached (run {hit.info.run_id[:12]})")
                outputs[step.name] = cache.outputs_of_run(hit)
                upstream[step.name] = hit.info.run_id
                outcomes.append(StepOutcome(step.name, step.stage, "cached", hit.info.run_id, outputs[step.name]))
        return PipelineResult(None, outcomes)

    def _report(self, result: PipelineResult, seconds: float) -> dict[str, Any] | None:
        from anima.pipeline.report import champion_summary, print_report

        champ = champion_summary(self.spec, result.steps)
        print_report(self.console, self.spec, result, champ, seconds)
        return champ
