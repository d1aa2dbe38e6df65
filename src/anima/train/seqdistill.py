"""Sequence-level distillation: a teacher (any tokenizer) answers prompts; its replies become SFT data.

The teacher's replies are cached as a dataset of their own under
``<processed_dir>/distill-<data name>/<fingerprint>/`` (``train.jsonl`` + ``manifest.json``). The fingerprint
covers the teacher's weights/tokenizer/template (file contents, not paths), the prompts and the sampling
settings, so a changed teacher or prompt set regenerates and an unchanged one is reused.
``train.jsonl`` holds one chat example per line (``{"id", "messages", "source", "domain", "persona", "score",
"teacher"}``), usable as a ``jsonl_chat`` data source.

``distill.mode=sequence`` generates (or reuses) the pairs and trains the student on them with `lm`;
``distill.mode=generate`` only produces them (one MLflow run that logs the dataset).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from anima.config.stage_schemas import TrainConfig
from anima.data.chat_readers import read_jsonl_chats
from anima.errors import ConfigError, DataError
from anima.fingerprint import hash_files, hash_obj

FORMAT_VERSION = 1


@dataclass
class TeacherPairs:
    name: str
    fingerprint: str
    path: Path  # the dataset dir
    examples: list[dict]
    teacher: str  # canonical teacher URI
    failures: int = 0
    generated_now: bool = False


def prompt_of(messages: Sequence[dict]) -> list[dict] | None:
    """The conversation up to (and including) its last user message; None when there is no user turn."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    return None if last is None else [dict(role=m["role"], content=m["content"]) for m in messages[:last + 1]]


def collect_prompts(spec: TrainConfig, source) -> tuple[list[list[dict]], str]:
    """(prompts as message lists, where they came from): distill.prompts (a .txt/.jsonl/.json file) or the
    user turns of the data's train split. Deduplicated, in a seeded order, at most distill.max_prompts."""
    import random

    given = spec.distill.prompts
    if given:
        from anima.synth.synthesize import load_prompts

        raw = load_prompts(given)
        prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else prompt_of(p) for p in raw]
        origin = given
    else:
        if source is None:
            raise ConfigError("distill.mode needs prompts: set distill.prompts=<file> or a chat data= config")
        prompts = [prompt_of(ex["messages"]) for ex in source.splits.get("train", [])]
        origin = f"{source.name}@{source.fingerprint}:train"
    seen, unique = set(), []
    for p in prompts:
        key = json.dumps(p, sort_keys=True) if p else None
        if key and key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise DataError(f"distill prompts from {origin}: no conversation has a user turn")
    random.Random(spec.seed).shuffle(unique)
    return unique[: spec.distill.max_prompts], origin


def teacher_fingerprint(model_dir: Path) -> str:
    """Content hash of what decides the teacher's replies: weights, config, tokenizer, template."""
    names = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "anima.json")
    files = [model_dir / n for n in names if (model_dir / n).is_file()]
    files += sorted(model_dir.glob("*.safetensors"))
    return hash_files(files)


def ensure_teacher_pairs(spec: TrainConfig, source) -> TeacherPairs:
    """The teacher's replies to the prompts, generated once per (teacher, prompts, sampling) and cached."""
    from anima.generation.sampling import sampling_from_config
    from anima.model.resolve import resolve_model

    if not spec.teacher:
        raise ConfigError(f"distill.mode={spec.distill.mode} needs teacher=<model URI or local HF model dir>")
    teacher = resolve_model(spec.teacher, spec.tracking)
    prompts, origin = collect_prompts(spec, source)
    params = sampling_from_config(spec.sampling, seed=spec.seed)
    settings = {k: getattr(params, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty",
                                                  "max_new_tokens", "seed")}
    fp = hash_obj({"v": FORMAT_VERSION, "teacher": teacher_fingerprint(teacher.path), "prompts": prompts,
                   "sampling": settings})
    name = f"distill-{source.name if source is not None else Path(origin).stem}"
    final = Path(spec.paths.processed_dir) / name / fp
    if (final / "manifest.json").is_file():
        manifest = json.loads((final / "manifest.json").read_text())
        return TeacherPairs(name, fp, final, read_jsonl_chats(final / "train.jsonl"), manifest["teacher"],
                            int(manifest.get("failures", 0)))

    from anima.synth.synthesize import synthesize
    from anima.synth.teachers import HFTeacher

    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        result = synthesize(prompts, HFTeacher(teacher.path, threads=spec.device.threads or None), params,
                            work / "raw.jsonl")
        examples = []
        for i, ex in enumerate(read_jsonl_chats(work / "raw.jsonl")):
            examples.append({"id": f"{fp[:8]}-{i:06d}", "messages": ex["messages"], "source": "distill",
                             "domain": "teacher", "persona": False, "score": None,
                             "teacher": teacher.canonical_uri})
        if not examples:
            raise DataError(f"teacher={spec.teacher} answered none of {len(prompts)} prompts "
                            f"({'; '.join(result.errors[:2])})")
        with open(work / "train.jsonl", "w", encoding="utf-8") as f:
            for ex in examples:
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
        (work / "raw.jsonl").unlink()
        manifest = {"name": name, "fingerprint": fp, "teacher": teacher.canonical_uri, "teacher_path": str(teacher.path),
                    "prompts_from": origin, "n_prompts": len(prompts), "n_examples": len(examples),
                    "failures": result.failures, "sampling": settings, "format_version": FORMAT_VERSION}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            os.replace(work, final)
        except OSError:  # a concurrent run finished first: its identical dataset wins
            if not (final / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return TeacherPairs(name, fp, final, examples, teacher.canonical_uri, result.failures, generated_now=True)


def generate_stage(cfg: Any, spec: TrainConfig, overrides: Sequence[str] | None = None, nested: bool = False):
    """`anima distill distill.mode=generate`: produce (or reuse) the teacher pairs, log them as a dataset.
    `spec` is the typed view of `cfg`; the run logs `cfg` itself (its config and overrides)."""
    import mlflow

    from anima.tracking.datasets import log_dataset_input
    from anima.tracking.run import stage_run
    from anima.train.chat_source import load_chat_source
    from anima.train.result import TrainResult
    from anima.train.settings import torch_settings

    source = None if spec.distill.prompts else load_chat_source(spec.data, spec.paths, spec.tracking)
    with torch_settings(spec.device), stage_run(cfg, overrides=overrides, nested=nested) as active:
        pairs = ensure_teacher_pairs(spec, source)
        if source is not None:
            log_dataset_input(source.name, source.fingerprint, source.path, "prompts")
        log_dataset_input(pairs.name, pairs.fingerprint, str(pairs.path), "generated")
        metrics = {"distill/pairs": float(len(pairs.examples)), "distill/failures": float(pairs.failures)}
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"anima.teacher": pairs.teacher, "anima.dataset": f"{pairs.name}@{pairs.fingerprint}",
                         "anima.dataset_path": str(pairs.path)})
        preview = "\n\n---\n\n".join("\n".join(f"**{m['role']}**: {m['content']}" for m in ex["messages"])
                                     for ex in pairs.examples[:20])
        mlflow.log_text(preview, "samples/teacher_pairs.md")
        result = TrainResult(active.info.run_id, pairs.path, metrics)
    print(f"teacher pairs: {len(pairs.examples)} in {pairs.path / 'train.jsonl'} "
          f"(use as a data source: kind=jsonl_chat path={pairs.path / 'train.jsonl'})")
    return result
