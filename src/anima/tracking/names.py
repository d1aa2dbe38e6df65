"""Readable MLflow run names: `<stage>-<model>-<data>` plus the few settings a person tells runs apart by.

Everything comes from the composed config (never from override text), so a name holds no path, no URI and
no secret: `sft-tiny-chat_mix-lr=3e-4`, `eval-anima-tiny@candidate`, `promote-anima-tiny`. The override
list only decides which optional settings are worth showing (those the user set).
"""

from __future__ import annotations

from typing import Any, Sequence

MAX_LEN = 100

# (config key, label, neutral value): shown when the key (or its config group) was overridden and the composed
# value is not the neutral one (a LoRA rank of 0 says nothing).
SHOWN: tuple[tuple[str, str, Any], ...] = (
    ("trainer.max_steps", "steps", None),
    ("trainer.batch_size", "bs", None),
    ("trainer.grad_accum", "accum", 1),
    ("loss.kd.weight", "kd", 0),
    ("loss.kd.temperature", "T", None),
    ("data.rehearsal.ratio", "rehearsal", 0),
    ("model.lora.r", "lora", 0),
    ("chat.template", "template", None),
    ("distill.mode", "mode", None),
)
DEFAULT_SEED = 1337
TRAINING = ("pretrain", "sft", "distill")


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        try:
            node = node.get(part) if hasattr(node, "get") else None
        except Exception:  # a missing mandatory value (???)
            return None
        if node is None:
            return None
    return node


def fmt(value: Any) -> str:
    """3e-4 for small floats, 0.5 / 200 / chatml otherwise."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            mant, exp = f"{value:.2e}".split("e")
            return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
        return f"{value:g}"
    return str(value)


def short_model(uri: Any) -> str | None:
    """`models:/anima-tiny@champion` -> `anima-tiny@champion`, `runs:/<id>/model` -> `run-<id8>`; a path -> None."""
    if not uri:
        return None
    s = str(uri)
    if s.startswith("models:/"):
        return s[len("models:/"):].strip("/") or None
    if s.startswith("runs:/"):
        return f"run-{s[len('runs:/'):].split('/')[0][:8]}"
    return None if _unsafe(s) else s


def _unsafe(s: str) -> bool:
    return "://" in s or ":/" in s or "/" in s or "\\" in s or s.startswith(("~", ".")) or "@" in s and ":" in s


def _label(value: Any) -> str | None:
    if value is None or value == "":
        return None
    s = str(value)
    return None if _unsafe(s) else s


def _touched(key: str, keys: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))


def _stage_parts(stage: str, cfg: Any) -> list[str | None]:
    """What identifies a run of `stage` besides the tunable settings."""
    model = _get(cfg, "model")
    if stage in TRAINING or (stage not in ("eval", "retrain", "chat", "serve") and hasattr(model, "get")):
        parts = [_label(_get(cfg, "model.name")) if hasattr(model, "get") else short_model(model),
                 _label(_get(cfg, "data.name"))]
        init = short_model(_get(cfg, "init_from"))
        if init:
            parts.append(f"from={init}")
        teacher = short_model(_get(cfg, "teacher")) if stage == "distill" else None
        if teacher:
            parts.append(f"teacher={teacher}")
        return parts
    if stage in ("eval", "retrain"):
        parts = [short_model(model)]
        if stage == "eval" and short_model(_get(cfg, "compare")):
            parts.append(f"vs={short_model(_get(cfg, 'compare'))}")
        return parts
    if stage == "promote":
        version = _get(cfg, "version")
        return [_label(_get(cfg, "registry.name")), f"v{version}" if version else None]
    if stage == "merge":
        name = _get(cfg, "merge.register_name") or _get(cfg, "registry.name")
        return [_label(name), _label(_get(cfg, "merge.method"))]
    if stage == "synth":
        teacher = _label(_get(cfg, "teacher.model")) if _get(cfg, "teacher.kind") == "openai" \
            else short_model(_get(cfg, "teacher.path"))
        name = _label(_get(cfg, "synth.name"))
        return [None if name == "synth" else name, teacher]
    if stage == "sweep":
        return [_label(_get(cfg, "sweep.study_name") or _get(cfg, "sweep.name"))]
    return [_label(_get(cfg, "data.name"))]


def run_name(cfg: Any, overrides: Sequence[str] = ()) -> str:
    """The default MLflow run name of a stage run (an explicit `run_name` is used as given instead)."""
    stage = str(_get(cfg, "stage") or "run")
    parts = [stage, *_stage_parts(stage, cfg)]
    keys = {str(o).split("=", 1)[0].lstrip("+~").strip() for o in overrides if "=" in str(o)}
    lr = _get(cfg, "retrain.lr") if stage == "retrain" else _get(cfg, "optim.lr")
    if lr is not None and stage in (*TRAINING, "retrain"):
        parts.append(f"lr={fmt(lr)}")
    if stage in (*TRAINING, "retrain"):
        for key, label, neutral in SHOWN:
            value = _get(cfg, key)
            if value is not None and value != neutral and not hasattr(value, "keys") and _touched(key, keys) \
                    and _label(value):
                parts.append(f"{label}={fmt(value)}")
    seed = _get(cfg, "seed")
    if seed is not None and seed != DEFAULT_SEED and stage in (*TRAINING, "retrain", "synth"):
        parts.append(f"seed={seed}")
    return "-".join(p for p in parts if p)[:MAX_LEN].rstrip("-")
