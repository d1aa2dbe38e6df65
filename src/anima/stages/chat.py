"""anima chat: talk to a model in the terminal; ratings and corrections go to the feedback file.

No MLflow run per session (a chat is interactive, not an experiment): what it produces is feedback.jsonl,
each record stamped with the resolved registry version, which `anima retrain` turns into training data.
The helpers here (resolve + load an engine, describe it) are shared with serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def load_engine(cfg: DictConfig, backend: str = "auto", compile_in_background: bool = False):
    """(resolved model, ChatEngine). An unknown model or alias fails in one line listing what exists.
    Compiled decode steps are cached under ``paths.cache_dir``; ``compile_in_background`` builds a missing one."""
    from anima.generation.engine import ChatEngine
    from anima.model.resolve import resolve_model

    resolved = resolve_model(str(cfg.model), cfg.tracking)
    threads = cfg.device.get("threads") if cfg.get("device") is not None else None
    engine = ChatEngine(resolved.path, threads=int(threads) if threads else None, backend=backend,
                        cache_dir=str(cfg.paths.cache_dir), build="background" if compile_in_background else "never")
    return resolved, engine


def describe(resolved: Any) -> str:
    """`models:/anima-tiny@champion (v3)`: what the user asked for and what it pointed at."""
    if resolved.version and resolved.canonical_uri != resolved.uri:
        return f"{resolved.uri} (v{resolved.version})"
    return resolved.uri


def run(cfg: DictConfig) -> int:
    from anima.chat.repl import ChatSession, run_repl
    from anima.generation.sampling import sampling_from_config

    resolved, engine = load_engine(cfg, str(cfg.chat.backend), bool(cfg.chat.compile))
    feedback = cfg.chat.feedback
    session = ChatSession(
        engine,
        sampling_from_config(cfg.sampling),
        feedback_path=Path(str(feedback)) if feedback else None,
        model_uri=resolved.canonical_uri,
        max_retries=int(cfg.chat.max_retries),
        model_version=resolved.version,
        system_prompt=cfg.chat.system_prompt or None,
        transcript_dir=str(cfg.chat.transcripts_dir),
        assistant_name=str(cfg.chat.assistant_name),
    )
    print(f"model: {describe(resolved)} [{engine.backend_status()}, {engine.template_name} template]",
          flush=True)
    return run_repl(session)
