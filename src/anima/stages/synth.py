"""anima synth: ask a teacher for replies to a prompt set; write a chat dataset the data stage reads.

One MLflow run: the prompts as a dataset input, the written file (path + content fingerprint) as the output
dataset, counts as metrics, the teacher's kind / base URL / model as tags. The API key stays in the teacher
client: the base URL is redacted before anything is logged, and only the *name* of the key's variable is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anima.config.groups import DeviceConfig, TrackingConfig
from anima.config.synth import SynthStageConfig, TeacherConfig
from anima.config.typed import typed
from anima.errors import ConfigError, DataError


@dataclass
class SynthRun:
    run_id: str
    out_path: Path
    fingerprint: str
    count: int
    failures: int
    teacher: str


def make_teacher(t: TeacherConfig, tracking: TrackingConfig, device: DeviceConfig) -> tuple[Any, dict[str, str]]:
    """(teacher client, tags describing it without secrets)."""
    from anima.synth.teachers import HFTeacher, OpenAITeacher, redact_url

    if t.kind == "openai":
        teacher = OpenAITeacher(t.base_url, t.model, api_key_env=t.api_key_env or None,
                                timeout=t.timeout, max_retries=t.max_retries)
        return teacher, {"anima.teacher.kind": "openai", "anima.teacher.base_url": redact_url(t.base_url),
                         "anima.teacher.model": t.model}
    if not t.path:
        raise ConfigError("teacher.kind=hf needs teacher.path=<model URI or local model dir>")
    from anima.model.resolve import resolve_model

    resolved = resolve_model(t.path, tracking)
    teacher = HFTeacher(resolved.path, threads=device.threads or None, backend=t.backend)
    return teacher, {"anima.teacher.kind": "hf", "anima.teacher.model": resolved.canonical_uri}


def _loggable(cfg: DictConfig) -> DictConfig:
    """The config with the teacher URL redacted (query-string keys included), for stage_run to log."""
    from anima.synth.teachers import redact_url

    safe = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    safe.teacher.base_url = redact_url(safe.teacher.base_url)
    return safe


def synth(cfg: DictConfig) -> SynthRun:
    """Run the stage; `cfg` is converted once to `SynthStageConfig`, and stays only as the run's logged config."""
    import mlflow

    from anima.fingerprint import hash_files
    from anima.generation.sampling import sampling_from_config
    from anima.synth import load_prompts, synthesize
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.redact import redact_text
    from anima.tracking.run import stage_run

    spec = typed(cfg, SynthStageConfig)
    opts = spec.synth
    if not opts.prompts:
        raise ConfigError("synth.prompts is not set: point it at a prompt file (.txt, .jsonl or .json)")
    prompts_path = Path(opts.prompts).expanduser()
    prompts = load_prompts(prompts_path)  # a bad file fails here, before any run or request
    if opts.max_prompts:
        prompts = prompts[: opts.max_prompts]
    params = sampling_from_config(spec.sampling)
    teacher, tags = make_teacher(spec.teacher, spec.tracking, spec.device)
    out = Path(opts.out).expanduser()
    with stage_run(_loggable(cfg), extra_tags=tags) as active:
        log_dataset_input(prompts_path.stem, hash_files([prompts_path]), str(prompts_path.resolve()), "prompts")
        n = len(prompts)

        def progress(done: int, total: int) -> None:
            if done % max(1, total // 10) == 0 or done == total:
                print(f"  {done}/{total} prompts", flush=True)

        result = synthesize(prompts, teacher, params, out, system_prompt=opts.system_prompt or None,
                            on_progress=progress)
        fp = hash_files([out])
        mlflow.log_metrics({"synth/prompts": n, "synth/examples": result.count, "synth/failures": result.failures})
        mlflow.set_tags({"anima.synth.out": str(out.resolve()), "anima.synth.fingerprint": fp,
                         "anima.synth.teacher": teacher.name})
        log_dataset_input(opts.name, fp, str(out.resolve()), "output", tags={"kind": "synth"})
        if result.errors:
            mlflow.log_text(redact_text("\n".join(result.errors)) + "\n", "synth/errors.txt")
        mlflow.log_artifact(str(out), "synth")
        if result.count < opts.min_success * n:
            first = f"; first: {result.errors[0]}" if result.errors else ""
            raise DataError(f"teacher {teacher.name} answered {result.count} of {n} prompts "
                            f"(< synth.min_success={opts.min_success}){first}")
        return SynthRun(active.info.run_id, out, fp, result.count, result.failures, teacher.name)


def run(cfg: DictConfig) -> SynthRun:
    res = synth(cfg)
    print(f"✓ synth run {res.run_id}: {res.count} examples ({res.failures} failed) from {res.teacher}")
    print(f"  wrote {res.out_path} (fingerprint {res.fingerprint})")
    print(f"  use it as a data source: +data.sources.{cfg.synth.name}.kind=synth "
          f"data.sources.{cfg.synth.name}.path={res.out_path}")
    return res
