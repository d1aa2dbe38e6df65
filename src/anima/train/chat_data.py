"""Conversation data for sft/distill: chats rendered with the model's template, loss only on assistant tokens.

Rendering: every conversation goes through ``anima.chat.templates.render_chat``, which marks assistant tokens
*while* rendering (including each turn's end-of-turn token, ``<|im_end|>`` for chatml and ``</s>`` for qa, so
the model learns to stop). Labels are shifted by one like pretraining batches: ``labels[t]`` is the token at
``t+1`` when that token is an assistant token, else -100.

Truncation policy (conversations longer than the context, ``model.max_seq_len`` tokens of input): the chat is
rendered with at most ``max_seq_len + 1`` tokens (one extra because of the shift). Whole oldest exchanges (a user
message and the replies after it) are dropped first, keeping the leading system message; if the last exchange
alone is still too long, the text is cut from the left keeping BOS, so the final reply survives. A
conversation left with no assistant token is dropped and counted (``data.dropped_no_target``); a split
with no assistant tokens at all is an error.

Batches: one conversation per row, right-padded to the longest row of the batch (``attention_mask`` 0 and
label -100 on padding); with ``trainer.packing`` training rows hold several whole conversations instead
(``anima.train.packing``). Training batch ``i`` is a pure function of ``(seed, i)``: rows are visited in a
seeded permutation per epoch, so resuming at step k replays exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from anima.errors import AnimaError, ConfigError, DataError
from anima.fingerprint import hash_bytes, hash_obj
from anima.train.losses import IGNORE_INDEX

SPLITS = ("train", "val", "test", "persona_train", "persona_val")


# ------------------------------------------------------------------------------------------ rendering ----
@dataclass
class ChatRows:
    """Tokenized conversations: per row the input ids and shifted labels (same length), and its example id."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    ids: list[str]
    truncated: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def target_tokens(self) -> int:
        return sum(sum(1 for x in row if x != IGNORE_INDEX) for row in self.labels)


def encode_conversation(messages: Sequence[dict], tokenizer, template, max_tokens: int
                        ) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for one chat; ``max_tokens`` is the input length (context)."""
    from anima.chat.templates import render_chat

    full = render_chat(messages, tokenizer, template)
    truncated = len(full.input_ids) > max_tokens + 1
    out = render_chat(messages, tokenizer, template, max_length=max_tokens + 1) if truncated else full
    ids, mask = out.input_ids, out.assistant_mask
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(ids[1:], mask[1:])]
    return ids[:-1], labels, truncated


def encode_examples(examples: Sequence[dict], tokenizer, template, max_tokens: int, what: str) -> ChatRows:
    """Render a list of ``{"id", "messages", ...}`` examples; drops (and counts) those with no target left."""
    rows = ChatRows([], [], [])
    for n, ex in enumerate(examples):
        msgs = ex.get("messages") if isinstance(ex, dict) else None
        if not isinstance(msgs, list):
            raise DataError(f"{what}: example {n} has no 'messages' list")
        ids, labels, truncated = encode_conversation(msgs, tokenizer, template, max_tokens)
        rows.truncated += int(truncated)
        if all(x == IGNORE_INDEX for x in labels):
            rows.dropped += 1
            continue
        rows.input_ids.append(ids)
        rows.labels.append(labels)
        rows.ids.append(str(ex.get("id", n)))
    return rows


def pad_rows(input_ids: Sequence[list[int]], labels: Sequence[list[int]], pad_id: int,
             length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to ``length`` (default: the longest row): attention 0 and label -100 on padding."""
    n = length or max(len(r) for r in input_ids)
    x = torch.full((len(input_ids), n), pad_id, dtype=torch.long)
    y = torch.full((len(input_ids), n), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(input_ids), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(input_ids, labels)):
        x[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        y[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
        att[i, :len(ids)] = 1
    return {"input_ids": x, "attention_mask": att, "labels": y}


class ChatBatches(torch.utils.data.IterableDataset):
    """Training batches over ``rows``; batch ``i`` depends only on (seed, i) (see the module doc).

    ``start`` is read when iteration begins, so after Lightning restores a checkpoint the stream continues at
    the restored position. Each batch also carries ``example_index`` (row numbers) for teacher-logit caching.
    """

    def __init__(self, rows: ChatRows, batch_size: int, pad_id: int, seed: int,
                 start: Callable[[], int] = lambda: 0, total: int = 1 << 62):
        if len(rows) == 0:
            raise DataError("no training conversation has an assistant token to learn from")
        self.rows, self.batch, self.pad_id, self.seed = rows, batch_size, pad_id, seed
        self.start, self.total = start, total
        self._perms: dict[int, list[int]] = {}

    def rows_per_epoch(self) -> int:
        """Rows one epoch visits (one pass over a seeded permutation). Not ``__len__``: Lightning would read
        it as the epoch length of this endless stream."""
        return len(self.rows)

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.rows_per_epoch(), generator=g).tolist()
        return self._perms[epoch]

    def indices_at(self, index: int) -> list[int]:
        n = self.rows_per_epoch()
        return [self._perm(p // n)[p % n] for p in range(index * self.batch, (index + 1) * self.batch)]

    def batch_at(self, index: int) -> dict[str, torch.Tensor]:
        idx = self.indices_at(index)
        batch = pad_rows([self.rows.input_ids[i] for i in idx], [self.rows.labels[i] for i in idx], self.pad_id)
        batch["example_index"] = torch.tensor(idx, dtype=torch.long)
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for index in range(self.start(), self.total):
            yield self.batch_at(index)


class ChatEvalSet(torch.utils.data.Dataset):
    """Validation rows padded to one length (the default collate stacks them); every row scored once."""

    def __init__(self, rows: ChatRows, pad_id: int, what: str):
        if len(rows) == 0:
            raise DataError(f"{what} split has no conversation with an assistant turn")
        self.rows, self.pad_id = rows, pad_id
        self.length = max(len(r) for r in rows.input_ids)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = pad_rows([self.rows.input_ids[i]], [self.rows.labels[i]], self.pad_id, self.length)
        return {k: v[0] for k, v in b.items()}


def chars_per_target_token(rows: ChatRows, tokenizer) -> float:
    """Characters per scored token, so `val/bpc` is comparable across tokenizers."""
    chars = sum(len(tokenizer.decode([t for t in lab if t != IGNORE_INDEX], skip_special_tokens=False))
                for lab in rows.labels)
    return chars / max(1, rows.target_tokens)


# ------------------------------------------------------------------------------------------ tokenizer ----
def check_template_tokens(tokenizer, template) -> None:
    """The template's end-of-turn token must be one token of this vocabulary, or turns could never end."""
    from anima.chat.templates import get_template

    tpl = get_template(template)
    eot = tpl.end_of_turn_token(tokenizer)
    vocab = tokenizer.get_vocab()
    if eot is None or eot not in vocab:
        other = [n for n in ("chatml", "qa") if n != tpl.name]
        raise ConfigError(f"chat.template={tpl.name}: the tokenizer has no {eot!r} token to end a turn with "
                          f"(use chat.template={other[0]})")
    if tokenizer.bos_token is None:
        raise ConfigError(f"chat.template={tpl.name}: the tokenizer has no BOS token")


def templated_tokenizer_dir(src_dir: Path, template: str, cache_dir: str | Path) -> Path:
    """A copy of the tokenizer in ``src_dir`` whose chat template is the preset trained with.

    The model dir saved at the end of training takes its tokenizer files from here, so the Jinja template in
    tokenizer_config.json and ``anima.json`` name the format the model was trained in (chat and serve use it).
    Cached by (tokenizer.json content, template); written atomically.
    """
    from transformers import PreTrainedTokenizerFast

    from anima.chat.templates import get_template
    from anima.tokenizer.hf import ANIMA_JSON

    src_dir = Path(src_dir)
    tok_json = src_dir / "tokenizer.json"
    if not tok_json.is_file():
        raise ConfigError(f"{src_dir} has no tokenizer.json (only fast Hugging Face tokenizers are supported)")
    tpl = get_template(template)
    extra = src_dir / "tokenizer_config.json"
    fp = hash_bytes(tok_json.read_bytes() + (extra.read_bytes() if extra.is_file() else b"") +
                    tpl.chat_template.encode())
    final = Path(str(cache_dir)) / "tokenizers" / f"chat-{tpl.name}-{fp}"
    if (final / "tokenizer.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(src_dir), local_files_only=True)
        tok.chat_template = tpl.chat_template
        tok.save_pretrained(str(work), save_jinja_files=False)
        cfg_path = work / "tokenizer_config.json"
        conf = json.loads(cfg_path.read_text(encoding="utf-8"))
        conf["chat_template"] = tpl.chat_template
        conf.update(add_bos_token=bool(getattr(tok, "add_bos_token", True)),
                    add_eos_token=bool(getattr(tok, "add_eos_token", False)))
        cfg_path.write_text(json.dumps(conf, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (work / "chat_template.jinja").unlink(missing_ok=True)
        if (src_dir / "tokenizer.model").is_file():
            shutil.copyfile(src_dir / "tokenizer.model", work / "tokenizer.model")
        (work / ANIMA_JSON).write_text(json.dumps({"chat_template": tpl.name}, indent=2) + "\n")
        os.replace(work, final)
    except OSError:
        if not (final / "tokenizer.json").is_file():
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def tokenizer_source(cfg: Any) -> tuple[Path | None, str]:
    """Where the run's tokenizer comes from: (dir, the key that chose it); (None, ...) = train one.

    A fine-tuned model keeps its parent's tokenizer (never retrained): tokenizer.path, else init_from, else
    model.path (model=hf), else (logit distillation) the teacher's, so student and teacher share ids.
    """
    from anima.model.resolve import resolve_model

    if cfg.tokenizer.get("path"):
        return Path(str(cfg.tokenizer.path)), "tokenizer.path"
    if cfg.get("init_from"):
        return resolve_model(str(cfg.init_from), cfg.tracking).path, "init_from"
    if str(cfg.model.arch) == "hf":
        if not cfg.model.get("path"):
            raise ConfigError("model=hf needs model.path=<local Hugging Face model dir>")
        return Path(str(cfg.model.path)), "model.path"
    if str(cfg.stage) == "distill" and str(cfg.distill.mode) == "logits" and cfg.get("teacher"):
        return resolve_model(str(cfg.teacher), cfg.tracking).path, "teacher"
    return None, "trained on the chat data"


def _chat_corpus(examples: Sequence[dict], fingerprint: str):
    """The shape `ensure_tokenizer` reads: `.train` documents and a content `.fingerprint`."""
    text = "\n".join(m["content"] for ex in examples for m in ex["messages"])
    return type("ChatCorpus", (), {"train": {"chat": text}, "val": {}, "fingerprint": fingerprint})()


# ------------------------------------------------------------------------------------------- datasets ----
@dataclass
class ChatSource:
    """A chat dataset's splits and identity (name, content fingerprint, where it lives)."""

    name: str
    fingerprint: str
    path: str
    splits: dict[str, list[dict]]
    inputs: list[tuple[str, str, str, str]] = field(default_factory=list)  # (name, fp, path, context)


def load_chat_source(cfg: Any) -> ChatSource:
    """The `data` config's built dataset (built and cached by the data stage's `ensure_dataset`)."""
    try:
        from anima.data.dataset import ensure_dataset
    except ImportError:
        raise AnimaError("data.kind=chat needs anima.data.dataset (the data stage), which is not installed") from None
    built = ensure_dataset(cfg.data, cfg.paths, cfg.tracking)
    splits = {}
    for name in SPLITS:
        try:
            splits[name] = list(built.split(name))
        except (KeyError, FileNotFoundError, DataError):
            splits[name] = []
    source = ChatSource(str(built.name), str(built.fingerprint), str(built.path), splits)
    reh = built.manifest.get("rehearsal")
    if reh:  # the replayed dataset is an input of the run too (as `anima data` records it), so lineage shows it
        ref = str(reh["source"])
        source.inputs.append((ref.split("/")[0], str(reh["fingerprint"]),
                              str(Path(str(cfg.paths.processed_dir)) / ref), "rehearsal"))
    return source


def _persona_sets(cfg: Any, source: ChatSource) -> tuple[list[dict], list[dict]]:
    """(persona train, persona val): the seed set the guard trains on and the held-out set persona/ppl uses.

    loss.persona_guard.data may name a .jsonl chat file (train only) or a built dataset "name" /
    "name/fingerprint" (its persona_train / persona_val splits, else train / val): e.g. absorbing an off-persona
    dataset while guarding with, and measuring on, chat_mix's persona set. Default: this dataset's splits.
    """
    spec = cfg.loss.persona_guard.get("data")
    own_val = source.splits.get("persona_val", [])
    if not spec:
        return source.splits.get("persona_train", []), own_val
    path = Path(str(spec))
    if path.suffix in (".jsonl", ".json") or path.is_file():
        from anima.train.seqdistill import read_jsonl_chats

        if not path.is_file():
            raise ConfigError(f"loss.persona_guard.data={spec}: no such file")
        source.inputs.append((path.stem, hash_bytes(path.read_bytes()), str(path.resolve()), "persona"))
        return read_jsonl_chats(path), own_val
    from anima.data.dataset import load_dataset_ref

    built = load_dataset_ref(str(spec), cfg.paths)
    source.inputs.append((built.name, built.fingerprint, str(built.path), "persona"))
    return built.split("persona_train") or built.split("train"), built.split("persona_val") or built.split("val")


@dataclass
class ChatData:
    """What prepare_chat_data hands the loss terms through ``DataBundle.aux``."""

    train: ChatRows
    persona_train: ChatRows | None
    pad_id: int
    template: str


def _prompt_messages(messages: Sequence[dict]) -> list[dict]:
    """System message(s) and the first user turn: the start of a conversation, for sample generations."""
    out = []
    for m in messages:
        out.append(m)
        if m["role"] == "user":
            break
    return out


def prepare_chat_data(cfg: Any, batch_size: int, block_size: int, source: ChatSource | None = None):
    """sft/distill data: tokenizer (the parent's, with the run's template), rendered splits, batches.

    Val sets: ``val`` (the conversation val split) and ``persona`` (the held-out persona seed set, when the
    dataset has one): their perplexities are logged at every evaluation as val/ppl and persona/ppl.
    """
    from anima.chat.templates import get_template, render_prompt
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.tokenizer.hf import load_tokenizer
    from anima.train.prepare import DataBundle

    template = get_template(str(cfg.chat.template)).name  # an unknown preset fails here, naming the known ones
    source = source or load_chat_source(cfg)
    if not source.splits.get("train"):
        raise DataError(f"dataset {source.name} ({source.path}) has an empty train split")

    src_dir, chosen_by = tokenizer_source(cfg)
    if src_dir is None:
        corpus = _chat_corpus(source.splits["train"], source.fingerprint)
        src_dir, _ = ensure_tokenizer(corpus, cfg.tokenizer, template, cfg.paths.cache_dir)
    tok_dir = templated_tokenizer_dir(src_dir, template, cfg.paths.cache_dir)
    tokenizer = load_tokenizer(tok_dir)
    check_template_tokens(tokenizer, template)
    lineage: dict[str, str] = {"datasets": f"{source.name}@{source.fingerprint}", "tokenizer_from": chosen_by}

    mode = str(cfg.distill.mode) if str(cfg.stage) == "distill" else "none"
    if mode == "logits":
        from anima.model.resolve import resolve_model
        from anima.train.teacher import check_shared_vocab

        if not cfg.get("teacher"):
            raise ConfigError("distill needs teacher=<model URI> (models:/name@alias, runs:/id/model or a dir)")
        teacher = resolve_model(str(cfg.teacher), cfg.tracking)
        vocab_size = None if str(cfg.model.arch) == "hf" or cfg.get("init_from") else int(cfg.model.vocab_size)
        check_shared_vocab(teacher.path, str(cfg.teacher), tokenizer, vocab_size)  # at start-up, before any work
        lineage["teacher"] = teacher.canonical_uri

    train_examples = source.splits["train"]
    fingerprint, name, path = source.fingerprint, source.name, source.path
    if mode == "sequence":
        from anima.train.seqdistill import ensure_teacher_pairs

        pairs = ensure_teacher_pairs(cfg, source)
        train_examples = pairs.examples
        fingerprint, name, path = pairs.fingerprint, pairs.name, str(pairs.path)
        source.inputs.append((source.name, source.fingerprint, source.path, "prompts"))
        lineage["teacher"] = pairs.teacher
        lineage["datasets"] = f"{pairs.name}@{pairs.fingerprint},{lineage['datasets']}"

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
    persona_train_examples, persona_val_examples = _persona_sets(cfg, source)
    persona_val = encode_examples(persona_val_examples, tokenizer, template, block_size, "persona val")
    if len(persona_val):
        val_sets["persona"] = ChatEvalSet(persona_val, pad_id, "persona")
        cpt["persona"] = chars_per_target_token(persona_val, tokenizer)

    persona_train = None
    if float(cfg.loss.persona_guard.weight) > 0:
        persona_train = encode_examples(persona_train_examples, tokenizer, template, block_size, "persona seed set")
        if len(persona_train) == 0:
            raise DataError(f"loss.persona_guard.weight={cfg.loss.persona_guard.weight} but dataset {source.name} "
                            f"has no persona_train conversations (set data.persona or loss.persona_guard.data)")
        spec = cfg.loss.persona_guard.get("data")
        lineage["persona_data"] = str(spec) if spec else f"{source.name}@{source.fingerprint}:persona_train"

    from anima.train.packing import train_batches

    make_train, batch_stats = train_batches(train_rows, batch_size, pad_id, int(cfg.seed), block_size,
                                            bool(cfg.trainer.get("packing", False)))
    prompts = [render_prompt(_prompt_messages(ex["messages"]), tokenizer, template, max_length=block_size // 2)
               for ex in source.splits["val"][: int(cfg.trainer.num_samples)]]
    stats = {"train_examples": len(train_rows), "val_examples": len(val_rows),
             "persona_val_examples": len(persona_val), "train_target_tokens": train_rows.target_tokens,
             "val_target_tokens": val_rows.target_tokens, "truncated": train_rows.truncated + val_rows.truncated,
             "dropped_no_target": train_rows.dropped + val_rows.dropped, "chat_template": template, **batch_stats}
    if persona_train is not None:
        stats["persona_train_examples"] = len(persona_train)
    bundle = DataBundle(
        tokenizer_dir=tok_dir, tokenizer=tokenizer, make_train=make_train, val_sets=val_sets,
        fingerprint=fingerprint, dataset_name=name, dataset_path=path, chars_per_token=cpt,
        sample_prompts=prompts, stats=stats,
    )
    bundle.aux["chat"] = ChatData(train_rows, persona_train, pad_id, template)
    bundle.aux["inputs"] = list(source.inputs)
    bundle.lineage.update(lineage)
    return bundle


def content_fingerprint(examples: Sequence[dict]) -> str:
    """Fingerprint of a list of chat examples (ids and messages), independent of files and mtimes."""
    return hash_obj([{"id": ex.get("id"), "messages": ex["messages"]} for ex in examples])
