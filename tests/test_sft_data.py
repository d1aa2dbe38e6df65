"""SFT batches: labels only on assistant tokens (end-of-turn included), shift by one, truncation, determinism,
the template travelling with the tokenizer, and clear errors for data that has nothing to learn."""

from __future__ import annotations

import json

import pytest
import torch

from anima.errors import ConfigError, DataError
from tests.helpers.models import cached_nano_model_dir

MULTI = [
    {"role": "system", "content": "You are anima."},
    {"role": "user", "content": "What is your name?"},
    {"role": "assistant", "content": "My name is anima."},
    {"role": "user", "content": "How are you today?"},
    {"role": "assistant", "content": "I am well, thank you for asking."},
]
NO_REPLY = [{"role": "user", "content": "Hello?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_nano_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def tok(model_dir):
    from anima.tokenizer.hf import load_tokenizer

    return load_tokenizer(model_dir)


def _targets(labels):
    return [t for t in labels if t != -100]


@pytest.mark.parametrize("template", ["chatml", "qa"])
def test_labels_are_assistant_tokens_shifted_with_end_of_turn(tok, template):
    from anima.tokenizer.chat_template import get_template, render_chat
    from anima.train.chat_rows import encode_conversation

    ids, labels, truncated = encode_conversation(MULTI, tok, template, 128)
    full = render_chat(MULTI, tok, template)
    assert not truncated and len(ids) == len(labels) == len(full.input_ids) - 1
    # labels[t] is the token at t+1 when that token is an assistant token, else ignored
    for t, lab in enumerate(labels):
        nxt = full.input_ids[t + 1]
        assert lab == (nxt if full.assistant_mask[t + 1] else -100)
        assert ids[t] == full.input_ids[t]
    eot = tok.convert_tokens_to_ids(get_template(template).end_of_turn_token(tok))
    targets = _targets(labels)
    assert targets.count(eot) == 2  # both turns end with their (trained) end-of-turn token
    text = tok.decode(targets, skip_special_tokens=True)
    assert "My name is anima." in text and "I am well" in text
    assert "What is your name" not in text and "You are anima" not in text and "How are you" not in text
    assert tok.bos_token_id not in targets


def test_truncation_keeps_the_last_reply_and_fits(tok):
    from anima.train.chat_rows import encode_conversation

    long_chat = [{"role": "user", "content": f"Question number {i} about the sea?"} if j == 0 else
                 {"role": "assistant", "content": f"Answer number {i}: the sea is wide and deep."}
                 for i in range(12) for j in range(2)]
    ids, labels, truncated = encode_conversation(long_chat, tok, "chatml", 64)
    assert truncated and len(ids) <= 64 and ids[0] == tok.bos_token_id
    text = tok.decode(_targets(labels), skip_special_tokens=True)
    assert "Answer number 11" in text and "Answer number 0:" not in text


def test_conversations_without_reply_are_dropped_and_counted(tok):
    from anima.train.chat_rows import ChatBatches, encode_examples

    rows = encode_examples([{"id": "a", "messages": MULTI}, {"id": "b", "messages": NO_REPLY}], tok, "chatml", 128, "t")
    assert len(rows) == 1 and rows.dropped == 1 and rows.ids == ["a"]
    empty = encode_examples([{"messages": NO_REPLY}], tok, "chatml", 128, "t")
    with pytest.raises(DataError, match="assistant"):
        ChatBatches(empty, 2, 3, 0)


def test_all_zero_mask_batch_is_an_error():
    from anima.train.losses import token_cross_entropy

    with pytest.raises(DataError, match="assistant mask all zeros"):
        token_cross_entropy(torch.zeros(2, 5, 7), torch.full((2, 5), -100))


def test_batches_are_padded_and_a_pure_function_of_the_step(tok):
    from anima.train.chat_rows import ChatBatches, encode_examples

    examples = [{"id": str(i), "messages": [{"role": "user", "content": "word " * (i + 1)},
                                             {"role": "assistant", "content": "reply " * (10 - i)}]}
                for i in range(10)]
    rows = encode_examples(examples, tok, "qa", 128, "t")
    a = ChatBatches(rows, 4, tok.pad_token_id, seed=7)
    b = ChatBatches(rows, 4, tok.pad_token_id, seed=7, start=lambda: 3, total=6)
    streamed = list(b)
    assert len(streamed) == 3
    for k, batch in zip(range(3, 6), streamed):
        for key in ("input_ids", "attention_mask", "labels", "example_index"):
            assert torch.equal(batch[key], a.batch_at(k)[key])
    batch = a.batch_at(0)
    assert batch["labels"][batch["attention_mask"] == 0].eq(-100).all()  # padding never a target
    assert batch["input_ids"][batch["attention_mask"] == 0].eq(tok.pad_token_id).all()
    # one epoch visits every example once (10 examples, batches of 4 -> 2.5 batches)
    seen = [i for k in range(5) for i in a.indices_at(k)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    other = ChatBatches(rows, 4, 3, seed=8)
    other_epoch = [i for k in range(3) for i in other.indices_at(k)][:10]
    assert sorted(other_epoch) == list(range(10)) and other_epoch != seen[:10]  # other seed: same rows, other order


def test_eval_set_rows_have_one_length(tok):
    from anima.train.chat_rows import ChatEvalSet, encode_examples

    rows = encode_examples([{"messages": MULTI}, {"messages": MULTI[1:3]}], tok, "chatml", 128, "t")
    ds = ChatEvalSet(rows, tok.pad_token_id, "val")
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int((batch["labels"] != -100).sum()) == rows.target_tokens


@pytest.mark.parametrize("template", ["qa", "chatml"])
def test_templated_tokenizer_dir_carries_the_training_template(model_dir, tmp_path, template):
    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import load_tokenizer, read_template_name
    from anima.train.chat_tokenizer import templated_tokenizer_dir

    out = templated_tokenizer_dir(model_dir, template, tmp_path)
    assert read_template_name(out) == template
    conf = json.loads((out / "tokenizer_config.json").read_text())
    assert conf["chat_template"] == get_template(template).chat_template
    assert (out / "tokenizer.model").is_file() and not (out / "chat_template.jinja").exists()
    tok = load_tokenizer(out)
    assert tok.get_vocab() == load_tokenizer(model_dir).get_vocab()
    assert templated_tokenizer_dir(model_dir, template, tmp_path) == out  # cached


def test_template_without_its_end_of_turn_token_is_a_clear_error():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from anima.train.chat_tokenizer import check_template_tokens

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "hello": 4}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")
    check_template_tokens(tok, "qa")
    with pytest.raises(ConfigError, match=r"chat.template=chatml.*<\|im_end\|>.*chat.template=qa"):
        check_template_tokens(tok, "chatml")
    with pytest.raises(ConfigError, match="unknown chat_template 'vicuna'; known presets: chatml, qa"):
        check_template_tokens(tok, "vicuna")
