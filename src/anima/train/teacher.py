"""Frozen reference models (a distillation teacher, the persona guard's starting copy) and the shared-vocabulary
check that logit-level distillation needs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from anima.errors import ModelError


def freeze(model):
    """Eval mode, no gradients: a reference model is only ever read."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def frozen_copy(model):
    """A frozen deep copy of `model` as it is now (the persona guard's anchor to the starting weights)."""
    base = getattr(model, "merged_for_save", None)
    return freeze(copy.deepcopy(base() if base else model))


def load_frozen(model_dir: Path | str):
    from anima.model.build import load_model_dir

    return freeze(load_model_dir(model_dir))


def _vocab(tokenizer_or_dir: Any) -> dict[str, int]:
    if isinstance(tokenizer_or_dir, (str, Path)):
        path = Path(tokenizer_or_dir) / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"{Path(tokenizer_or_dir)} has no tokenizer.json: cannot check its vocabulary")
        from tokenizers import Tokenizer

        return Tokenizer.from_str(path.read_text(encoding="utf-8")).get_vocab(with_added_tokens=True)
    return dict(tokenizer_or_dir.get_vocab())


def vocab_diff(a: Any, b: Any, limit: int = 3) -> str | None:
    """None when both map the same tokens to the same ids; else a short description of the difference."""
    va, vb = _vocab(a), _vocab(b)
    if va == vb:
        return None
    if len(va) != len(vb):
        return f"vocabulary sizes {len(va)} != {len(vb)}"
    moved = sorted(t for t in va if vb.get(t) != va[t])
    shown = ", ".join(f"{t!r}: {va[t]} vs {vb.get(t)}" for t in moved[:limit])
    return f"{len(moved)} of {len(va)} tokens differ ({shown}{', ...' if len(moved) > limit else ''})"


def check_shared_vocab(teacher_dir: Path, teacher_uri: str, student_tokenizer: Any,
                       student_vocab_size: int | None = None) -> None:
    """Logit distillation compares distributions id by id: the teacher must use the student's vocabulary."""
    hint = "(use distill.mode=sequence for a teacher with another tokenizer)"
    diff = vocab_diff(teacher_dir, student_tokenizer)
    if diff:
        raise ModelError(f"teacher={teacher_uri} and the student tokenizer differ: {diff} {hint}")
    cfg_path = Path(teacher_dir) / "config.json"
    t_size = json.loads(cfg_path.read_text()).get("vocab_size") if cfg_path.is_file() else None
    if student_vocab_size is not None and t_size is not None and int(t_size) != int(student_vocab_size):
        raise ModelError(f"teacher={teacher_uri} has vocab_size {t_size} but the student has {student_vocab_size} "
                         f"(set model.vocab_size={t_size}) {hint}")
