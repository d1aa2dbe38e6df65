"""anima synth: ask a teacher for replies to a prompt set; write a chat dataset the data stage reads.

One MLflow run: the prompts as a dataset input, the written file (path + content fingerprint) as the output
dataset, counts as metrics, the teacher's kind / base URL / model as tags. The API key stays in the teacher
client: the base URL is redacted before anything is logged, and only the *name* of the key's variable is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from anima.errors import ConfigError, DataError


@dataclass
class SynthRun:
    run_id: str
    out_path: Path
    fingerprint: str
    count: int
    failures: int
    teacher: str


def make_teacher(cfg: DictConfig):
    """(teacher client, tags describing it without secrets)."""
    from anima.synth.teachers import HFTeacher, OpenAITeacher, redact_url

    t = cfg.teacher
    if str(t.kind) == "openai":
        teacher = OpenAITeacher(str(t.base_url), str(t.model), api_key_env=t.api_key_env or None,
                                timeout=float(t.timeout), max_retries=int(t.max_retries))
        return teacher, {"anima.teacher.kind": "openai", "anima.teacher.base_url": redact_url(str(t.base_url)),
                         "anima.teacher.model": str(t.model)}
    if not t.path:
        raise ConfigError("teacher.kind=hf needs teacher.path=<model URI or local model dir>")
    from anima.model.resolve import resolve_model

    resolved = resolve_model(str(t.path), cfg.tracking)
    threads = cfg.device.get("threads")
    teacher = HFTeacher(resolved.path, threads=int(threads) if threads else None, backend=str(t.backend))
    return teacher, {"anima.teacher.kind": "hf", "anima.teacher.model": resolved.canonical_uri}


def _loggable(cfg: DictConfig) -> DictConfig:
    """The config with the teacher URL redacted (query-string keys included), for stage_run to log."""
    from anima.synth.teachers import redact_url

    safe = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    safe.teacher.base_url = redact_url(str(cfg.teacher.base_url))
    return safe


def synth(cfg: DictConfig) -> SynthRun:
    import mlflow

    from anima.fingerprint import hash_files
    from anima.generation.sampling import sampling_from_config
    from anima.synth import load_prompts, synthesize
    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.redact import redact_text
    from anima.tracking.run import stage_run

    if not cfg.synth.prompts:
        raise ConfigError("synth.prompts is not set: point it at a prompt file (.txt, .jsonl or .json)")
    prompts_path = Path(str(cfg.synth.prompts)).expanduser()
    prompts = load_prompts(prompts_path)  # a bad file fails here, before any run or request
    if int(cfg.synth.max_prompts):
        prompts = prompts[: int(cfg.synth.max_prompts)]
    params = sampling_from_config(cfg.sampling)
    teacher, tags = make_teacher(cfg)
    out = Path(str(cfg.synth.out)).expanduser()
    with stage_run(_loggable(cfg), extra_tags=tags) as active:
        log_dataset_input(prompts_path.stem, hash_files([prompts_path]), str(prompts_path.resolve()), "prompts")
        n = len(prompts)

        def progress(done: int, total: int) -> None:
            if done % max(1, total // 10) == 0 or done == total:
                print(f"  {done}/{total} prompts", flush=True)

        result = synthesize(prompts, teacher, params, out, system_prompt=cfg.synth.system_prompt or None,
                            on_progress=progress)
        fp = hash_files([out])
        mlflow.log_metrics({"synth/prompts": n, "synth/examples": result.count, "synth/failures": result.failures})
        mlflow.set_tags({"anima.synth.out": str(out.resolve()), "anima.synth.fingerprint": fp,
                         "anima.synth.teacher": teacher.name})
        log_dataset_input(str(cfg.synth.name), fp, str(out.resolve()), "output", tags={"kind": "synth"})
        if result.errors:
            mlflow.log_text(redact_text("\n".join(result.errors)) + "\n", "synth/errors.txt")
        mlflow.log_artifact(str(out), "synth")
        if result.count < float(cfg.synth.min_success) * n:
            first = f"; first: {result.errors[0]}" if result.errors else ""
            raise DataError(f"teacher {teacher.name} answered {result.count} of {n} prompts "
                            f"(< synth.min_success={cfg.synth.min_success}){first}")
        return SynthRun(active.info.run_id, out, fp, result.count, result.failures, teacher.name)


def run(cfg: DictConfig) -> SynthRun:
    res = synth(cfg)
    print(f"✓ synth run {res.run_id}: {res.count} examples ({res.failures} failed) from {res.teacher}")
    print(f"  wrote {res.out_path} (fingerprint {res.fingerprint})")
    print(f"  use it as a data source: +data.sources.{cfg.synth.name}.kind=synth "
          f"data.sources.{cfg.synth.name}.path={res.out_path}")
    return res
