"""The tokenizer of a chat run: the parent's (or one trained on the chat data), saved with the run's template.

A fine-tuned model keeps its parent's tokenizer; the copy the run trains with carries the chat template preset
in tokenizer_config.json and ``anima.json``, so the saved model dir names the format it was trained in.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from anima.config.stage_schemas import TrainConfig
from anima.errors import ConfigError
from anima.fingerprint import hash_bytes


def chat_tokenizer(spec: TrainConfig, train_examples: Sequence[dict], fingerprint: str, template: str
                   ) -> tuple[Path, Any, str]:
    """(templated tokenizer dir, tokenizer, the key that chose its source) for a chat run."""
    from anima.tokenizer.ensure import ensure_tokenizer
    from anima.tokenizer.hf import load_tokenizer

    src_dir, chosen_by = tokenizer_source(spec)
    if src_dir is None:
        corpus = _chat_corpus(train_examples, fingerprint)
        src_dir, _ = ensure_tokenizer(corpus, spec.tokenizer, template, spec.paths.cache_dir)
    tok_dir = templated_tokenizer_dir(src_dir, template, spec.paths.cache_dir)
    tokenizer = load_tokenizer(tok_dir)
    check_template_tokens(tokenizer, template)
    return tok_dir, tokenizer, chosen_by


def check_template_tokens(tokenizer, template) -> None:
    """The template's end-of-turn token must be one token of this vocabulary, or turns could never end."""
    from anima.tokenizer.chat_template import get_template

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

    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import ANIMA_JSON, special_token_flags

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
        conf.update(special_token_flags(work))  # as tokenizer.json behaves; tok.add_bos_token misreports it
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


def tokenizer_source(spec: TrainConfig) -> tuple[Path | None, str]:
    """Where the run's tokenizer comes from: (dir, the key that chose it); (None, ...) = train one.

    A fine-tuned model keeps its parent's tokenizer (never retrained): tokenizer.path, else init_from, else
    model.path (model=hf), else (logit distillation) the teacher's, so student and teacher share ids.
    """
    from anima.model.resolve import resolve_model

    if spec.tokenizer.path:
        return Path(spec.tokenizer.path), "tokenizer.path"
    if spec.init_from:
        return resolve_model(spec.init_from, spec.tracking).path, "init_from"
    if spec.model.arch == "hf":
        if not spec.model.path:
            raise ConfigError("model=hf needs model.path=<local Hugging Face model dir>")
        return Path(spec.model.path), "model.path"
    if spec.stage == "distill" and spec.distill.mode == "logits" and spec.teacher:
        return resolve_model(spec.teacher, spec.tracking).path, "teacher"
    return None, "trained on the chat data"


def _chat_corpus(examples: Sequence[dict], fingerprint: str):
    """The shape `ensure_tokenizer` reads: `.train` documents and a content `.fingerprint`."""
    text = "\n".join(m["content"] for ex in examples for m in ex["messages"])
    return type("ChatCorpus", (), {"train": {"chat": text}, "val": {}, "fingerprint": fingerprint})()
