"""The run context: where the running stage writes, the overrides it was started with, and the tags every MLflow
run it starts inherits.

Whoever starts a stage sets it, once, around the call: the CLI from Hydra's job (its output dir and task
overrides), the pipeline for each step (the step's folder and overrides; the tags make the step's run a child
of the pipeline's run), a sweep for each trial (the trial's folder). Stages read it through `current()` and
`stage_output_dir()`; `stage_run` adds its tags. Outside any of them (tests, scripts) it is empty: no output
dir (a stage makes a fresh one), no overrides, no tags.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence


@dataclass(frozen=True)
class RunContext:
    output_dir: Path | None = None  # the job's folder; None: the stage makes `<experiments_dir>/<stage>/<time>`
    overrides: tuple[str, ...] = ()  # the command line the stage's run records (`anima <stage> <overrides>`)
    tags: Mapping[str, str] = field(default_factory=dict)  # added to every run `stage_run` starts
    command_line: bool = False  # the stage is the `anima <stage>` process's own job (see tracking.tracker)


_CURRENT: ContextVar[RunContext] = ContextVar("anima_run_context", default=RunContext())


def current() -> RunContext:
    return _CURRENT.get()


@contextlib.contextmanager
def run_context(output_dir: str | Path | None = None, overrides: Sequence[str] | None = None,
                tags: Mapping[str, str] | None = None, command_line: bool = False) -> Iterator[RunContext]:
    """Stages called inside this block see this context: a given output dir (created) and overrides replace the
    enclosing ones, tags are added to them (an explicit parent run of a nested run still wins, see stage_run).
    ``command_line``: the block is the `anima <stage>` command's own job (not inherited: a pipeline's steps and a
    sweep's trials are library calls of their stage)."""
    outer = current()
    out = Path(output_dir) if output_dir is not None else outer.output_dir
    if output_dir is not None:
        out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(out, tuple(overrides) if overrides is not None else outer.overrides,
                     {**outer.tags, **(tags or {})}, command_line)
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def stage_output_dir(spec: Any) -> Path:
    """The stage's output dir: the context's, else a new `<paths.experiments_dir>/<stage>/<timestamp>`.
    ``spec``: the stage's config (its typed dataclass, or the DictConfig composed onto it: strings either way)."""
    out = current().output_dir
    if out is None:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"_{time.time_ns() % 1_000_000:06d}"
        out = Path(spec.paths.experiments_dir) / spec.stage / stamp
    out.mkdir(parents=True, exist_ok=True)
    return out
