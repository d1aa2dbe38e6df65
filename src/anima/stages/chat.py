"""anima chat: talk to a model in the terminal; ratings and corrections go to the feedback file.

No MLflow run per session (a chat is interactive, not an experiment): what it produces is feedback.jsonl,
each record stamped with the resolved registry version, which `anima retrain` turns into training data.
The helpers here (resolve + load an engine, describe it) are shared with serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from anima.config.chat import ChatStageConfig, ModelSamplingStageConfig
from anima.config.typed import typed


def load_engine(spec: ModelSamplingStageConfig, backend: str = "auto", compile_in_background: bool = False):
    """(resolved model, ChatEngine) for `spec.model` (a typed chat/serve config, or serve's composed one).
    An unknown model or alias fails in one line listing what exists. Compiled decode steps are cached under
    ``paths.cache_dir``; ``compile_in_background`` builds a missing one."""
    from anima.generation.engine import ChatEngine
    from anima.model.resolve import resolve_model

    resolved = resolve_model(spec.model, spec.tracking)
    engine = ChatEngine(resolved.path, threads=spec.device.threads or None, backend=backend,
                        cache_dir=spec.paths.cache_dir, build="background" if compile_in_background else "never")
    return resolved, engine


def describe(resolved: Any) -> str:
    """`models:/anima-tiny@champion (v3)`: what the user asked for and what it pointed at."""
    if resolved.version and resolved.canonical_uri != resolved.uri:
        return f"{resolved.uri} (v{resolved.version})"
    return resolved.uri


def run(cfg: DictConfig) -> int:
    """The REPL on `cfg`, converted once to `ChatStageConfig` (no run is logged, so nothing else needs `cfg`)."""
    from anima.chat.repl import ChatSession, run_repl
    from anima.generation.sampling import sampling_from_config

    spec = typed(cfg, ChatStageConfig)
    opts = spec.chat
    resolved, engine = load_engine(spec, opts.backend, opts.compile)
    session = ChatSession(
        engine,
        sampling_from_config(spec.sampling),
        feedback_path=Path(opts.feedback) if opts.feedback else None,
        model_uri=resolved.canonical_uri,
        max_retries=opts.max_retries,
        model_version=resolved.version,
        system_prompt=opts.system_prompt or None,
        transcript_dir=opts.transcripts_dir,
        assistant_name=opts.assistant_name,
    )
    print(f"model: {describe(resolved)} [{engine.backend_status()}, {engine.template_name} template]",
          flush=True)
    return run_repl(session)
