"""Conversation data for sft/distill: the run's chat tokenizer, rendered splits and batches in a `DataBundle`.

The steps live beside this module, one concern each: `chat_source` (the built dataset and persona sets),
`chat_tokenizer` (the parent's tokenizer with the run's template), `chat_rows` (rendering with assistant-only
labels, truncation, padded batches), `packing` (several conversations per row), `seqdistill` (teacher replies
as training data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from anima.config.groups import PersonaGuardConfig
from anima.config.stage_schemas import TrainConfig
from anima.errors import ConfigError, DataError
from anima.tokenizer.chat_template import get_template, render_prompt
from anima.train.bundle import DataBundle
from anima.train.chat_rows import ChatEvalSet, ChatRows, chars_per_target_token, encode_examples
from anima.train.chat_source import ChatSource, load_chat_source, persona_sets
from anima.train.chat_tokenizer import chat_tokenizer
from anima.train.packing import train_batches


@dataclass
class ChatData:
    """What prepare_chat_data hands the loss terms through ``DataBundle.aux``."""

    train: ChatRows
    persona_train: ChatRows | None
    pad_id: int
    template: str


def prepare_chat_data(spec: TrainConfig, batch_size: int, block_size: int, source: ChatSource | None = None
                      ) -> DataBundle:
    """sft/distill data: tokenizer (the parent's, with the run's template), rendered splits, batches.

    Val sets: ``val`` (the conversation val split) and ``persona`` (the held-out persona seed set, when the
    dataset has one): their perplexities are logged at every evaluation as val/ppl and persona/ppl.
    """
    template = get_template(spec.chat.template).name  # an unknown preset fails here, naming the known ones
    source = source or load_chat_source(spec.data, spec.paths, spec.tracking)
    if not source.splits.get("train"):
        raise DataError(f"dataset {source.name} ({source.path}) has an empty train split")
    tok_dir, tokenizer, chosen_by = chat_tokenizer(spec, source.splits["train"], source.fingerprint, template)
    lineage: dict[str, str] = {"datasets": f"{source.name}@{source.fingerprint}", "tokenizer_from": chosen_by}
    mode = spec.distill.mode if spec.stage == "distill" else "none"
    if mode == "logits":
        lineage["teacher"] = _check_logit_teacher(spec, tokenizer)
    train_examples, fingerprint, name, path = _training_examples(spec, source, mode, lineage)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_rows = encode_examples(train_examples, tokenizer, template, block_size, f"dataset {name} train")
    if len(train_rows) == 0:
        raise DataError(f"dataset {name} ({path}): no training conversation has an assistant turn "
                        f"(after truncation to model.max_seq_len={block_size})")
    val_rows = encode_examples(source.splits.get("val", []), tokenizer, template, block_size, f"{name} val")
    if len(val_rows) == 0:
        raise DataError(f"dataset {source.name}: the val split has no conversation with an assistant turn "
                        f"(raise data.split.val)")
    val_sets: dict[str, Any] = {"val": ChatEvalSet(val_rows, pad_id, "val")}
    cpt = {"val": chars_per_target_token(val_rows, tokenizer)}
    persona_train_examples, persona_val_examples = persona_sets(spec.loss.persona_guard, spec.paths, source)
    persona_val = encode_examples(persona_val_examples, tokenizer, template, block_size, "persona val")
    if len(persona_val):
        val_sets["persona"] = ChatEvalSet(persona_val, pad_id, "persona")
        cpt["persona"] = chars_per_target_token(persona_val, tokenizer)
    persona_train = _persona_train(spec.loss.persona_guard, source, persona_train_examples, tokenizer, template,
                                   block_size, lineage)

    make_train, batch_stats = train_batches(train_rows, batch_size, pad_id, spec.seed, block_size,
                                            spec.trainer.packing)
    stats = {"train_examples": len(train_rows), "val_examples": len(val_rows),
             "persona_val_examples": len(persona_val), "train_target_tokens": train_rows.target_tokens,
             "val_target_tokens": val_rows.target_tokens, "truncated": train_rows.truncated + val_rows.truncated,
             "dropped_no_target": train_rows.dropped + val_rows.dropped, "chat_template": template, **batch_stats}
    if persona_train is not None:
        stats["persona_train_examples"] = len(persona_train)
    bundle = DataBundle(
        tokenizer_dir=tok_dir, tokenizer=tokenizer, make_train=make_train, val_sets=val_sets,
        fingerprint=fingerprint, dataset_name=name, dataset_path=path, chars_per_token=cpt,
        sample_prompts=_sample_prompts(source, tokenizer, template, block_size, spec.trainer.num_samples),
        stats=stats,
    )
    bundle.aux["chat"] = ChatData(train_rows, persona_train, pad_id, template)
    bundle.aux["inputs"] = list(source.inputs)
    bundle.lineage.update(lineage)
    return bundle


def _check_logit_teacher(spec: TrainConfig, tokenizer) -> str:
    """distill.mode=logits: the teacher must share the student's vocabulary; checked at start-up, before any
    work. Returns the teacher's canonical URI."""
    from anima.model.resolve import resolve_model
    from anima.train.teacher import check_shared_vocab

    if not spec.teacher:
        raise ConfigError("distill needs teacher=<model URI> (models:/name@alias, runs:/id/model or a dir)")
    teacher = resolve_model(spec.teacher, spec.tracking)
    vocab_size = None if spec.model.arch == "hf" or spec.init_from else spec.model.vocab_size
    check_shared_vocab(teacher.path, spec.teacher, tokenizer, vocab_size)
    return teacher.canonical_uri


def _training_examples(spec: TrainConfig, source: ChatSource, mode: str, lineage: dict[str, str]
                       ) -> tuple[list[dict], str, str, str]:
    """(examples, fingerprint, name, path) the run trains on: the train split, or with distill.mode=sequence
    the teacher's replies to its prompts (then the dataset is an input as "prompts" and lineage names both)."""
    if mode != "sequence":
        return source.splits["train"], source.fingerprint, source.name, source.path
    from anima.train.seqdistill import ensure_teacher_pairs

    pairs = ensure_teacher_pairs(spec, source)
    source.inputs.append((source.name, source.fingerprint, source.path, "prompts"))
    lineage["teacher"] = pairs.teacher
    lineage["datasets"] = f"{pairs.name}@{pairs.fingerprint},{lineage['datasets']}"
    return pairs.examples, pairs.fingerprint, pairs.name, str(pairs.path)


def _persona_train(guard: PersonaGuardConfig, source: ChatSource, examples: Sequence[dict], tokenizer,
                   template: str, block_size: int, lineage: dict[str, str]) -> ChatRows | None:
    """The persona guard's seed rows when loss.persona_guard.weight > 0 (an empty set is an error)."""
    if not guard.weight > 0:
        return None
    rows = encode_examples(examples, tokenizer, template, block_size, "persona seed set")
    if len(rows) == 0:
        raise DataError(f"loss.persona_guard.weight={guard.weight} but dataset {source.name} "
                        f"has no persona_train conversations (set data.persona or loss.persona_guard.data)")
    lineage["persona_data"] = guard.data or f"{source.name}@{source.fingerprint}:persona_train"
    return rows


def _sample_prompts(source: ChatSource, tokenizer, template: str, block_size: int, n: int) -> list[list[int]]:
    """Prompt ids of the first ``n`` val conversations (system message(s) and first user turn), for samples."""
    return [render_prompt(_prompt_messages(ex["messages"]), tokenizer, template, max_length=block_size // 2)
            for ex in source.splits["val"][:n]]


def _prompt_messages(messages: Sequence[dict]) -> list[dict]:
    """System message(s) and the first user turn: the start of a conversation, for sample generations."""
    out = []
    for m in messages:
        out.append(m)
        if m["role"] == "user":
            break
    return out
