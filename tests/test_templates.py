"""Chat templates: masks built while rendering, Jinja/Python agreement, prompt/training prefix, truncation."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from anima.errors import ConfigError, DataError

STDLIB = Path(sysconfig.get_paths()["stdlib"])

CHATS = [
    [{"role": "user", "content": "Hello, who are you?"}, {"role": "assistant", "content": "I am anima, a small model."}],
    [
        {"role": "system", "content": "You are a helpful, terse assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And in words? 😀"},
        {"role": "assistant", "content": "Four — naïvely, vier.\nSecond line."},
    ],
    [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "Second question"},
        {"role": "assistant", "content": "Second answer"},
        {"role": "user", "content": "Third question"},
        {"role": "assistant", "content": "Third answer, which is the longest of all the answers given here."},
    ],
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import build_hf_tokenizer
    from anima.tokenizer.train import train_sentencepiece

    corpus = [STDLIB / m for m in ("argparse.py", "difflib.py", "textwrap.py", "LICENSE.txt") if (STDLIB / m).is_file()]
    model = train_sentencepiece(corpus, 512, tmp_path_factory.mktemp("spm"))
    return build_hf_tokenizer(model, get_template("chatml").chat_template)


def _with_template(tok, name):
    from anima.tokenizer.chat_template import get_template

    tok.chat_template = get_template(name).chat_template
    return tok


def masked_text(tok, r) -> str:
    return tok.decode([i for i, m in zip(r.input_ids, r.assistant_mask) if m], skip_special_tokens=True)


@pytest.mark.parametrize("name", ["chatml", "qa"])
@pytest.mark.parametrize("chat", CHATS)
def test_mask_covers_exactly_assistant_content_and_end_of_turn(tok, name, chat):
    from anima.tokenizer.chat_template import get_template, render_chat

    tpl = get_template(name)
    r = render_chat(chat, tok, name)
    assert len(r.input_ids) == len(r.assistant_mask)
    assert r.input_ids[0] == tok.bos_token_id and r.assistant_mask[0] == 0
    eot_tok = tpl.end_of_turn_token(tok)
    eot = tok.convert_tokens_to_ids(eot_tok)
    replies = [m["content"] for m in chat if m["role"] == "assistant"]
    # one contiguous masked run per assistant turn, each = the reply followed by the end-of-turn token
    runs, cur = [], []
    for t, m in zip(r.input_ids, r.assistant_mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        assert run[-1] == eot and eot not in run[:-1]
        assert tok.decode(run, skip_special_tokens=False) == reply + eot_tok
    # every other end-of-turn occurrence (user/system turns in chatml) stays unmasked
    masked_eots = sum(m for t, m in zip(r.input_ids, r.assistant_mask) if t == eot)
    assert masked_eots == len(replies)


@pytest.mark.parametrize("name", ["chatml", "qa"])
def test_system_and_user_tokens_never_masked(tok, name):
    from anima.tokenizer.chat_template import render_chat

    chat = [
        {"role": "system", "content": "SYSTEMWORD persona line"},
        {"role": "user", "content": "USERWORD asks"},
        {"role": "assistant", "content": "reply"},
    ]
    r = render_chat(chat, tok, name)
    unmasked = tok.decode([i for i, m in zip(r.input_ids, r.assistant_mask) if not m])
    assert "SYSTEMWORD persona line" in unmasked and "USERWORD asks" in unmasked
    assert "reply" not in unmasked
    assert masked_text(tok, r).strip() == "reply"
    # no assistant turn at all -> nothing masked
    assert sum(render_chat(chat[:2], tok, name).assistant_mask) == 0


@pytest.mark.parametrize("name", ["chatml", "qa"])
@pytest.mark.parametrize("chat", CHATS)
def test_jinja_template_matches_python_renderer(tok, name, chat):
    from anima.tokenizer.chat_template import render_chat, render_text

    tok = _with_template(tok, name)
    for gen in (False, True):
        assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == render_text(
            chat, tok, name, add_generation_prompt=gen
        )
    # HF's own {% generation %} mask agrees with ours
    hf = tok.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    r = render_chat(chat, tok, name)
    assert list(hf["input_ids"]) == r.input_ids
    assert list(hf["assistant_masks"]) == r.assistant_mask


@pytest.mark.parametrize("name", ["chatml", "qa"])
@pytest.mark.parametrize("chat", CHATS)
def test_prompt_is_token_prefix_of_training_rendering(tok, name, chat):
    from anima.tokenizer.chat_template import render_chat, render_prompt

    for k, m in enumerate(chat):
        if m["role"] != "assistant":
            continue
        prompt = render_prompt(chat[:k], tok, name)
        full = render_chat(chat[: k + 1], tok, name).input_ids
        assert full[: len(prompt)] == prompt
        # the model generates exactly the masked tokens after the prompt
        assert render_chat(chat[: k + 1], tok, name).assistant_mask[len(prompt)] == 1


def test_truncation_drops_oldest_exchanges_keeps_system(tok):
    from anima.tokenizer.chat_template import render_chat

    chat = [{"role": "system", "content": "Persona."}] + CHATS[2]
    full = render_chat(chat, tok, "chatml")
    last_only = render_chat(chat[:1] + chat[-2:], tok, "chatml")
    two = render_chat(chat[:1] + chat[-4:], tok, "chatml")
    r = render_chat(chat, tok, "chatml", max_length=len(full.input_ids) - 1)
    assert r == two
    r = render_chat(chat, tok, "chatml", max_length=len(two.input_ids) - 1)
    assert r == last_only
    assert "Persona." in tok.decode(r.input_ids)
    # the last exchange alone is too long: cut from the left, BOS kept, final reply kept
    n = 20
    r = render_chat(chat, tok, "chatml", max_length=n)
    assert len(r.input_ids) == n and r.input_ids[0] == tok.bos_token_id
    assert r.input_ids[1:] == last_only.input_ids[-(n - 1):]
    assert r.assistant_mask[1:] == last_only.assistant_mask[-(n - 1):]
    assert masked_text(tok, r).endswith("given here.")
    # fits already: untouched
    assert render_chat(chat, tok, "chatml", max_length=10_000) == full


def test_unknown_template_and_role(tok):
    from anima.tokenizer.chat_template import get_template, render_chat

    with pytest.raises(ConfigError, match="unknown chat_template 'llama9'.*chatml, qa"):
        get_template("llama9")
    with pytest.raises(DataError, match="unknown role 'tool'"):
        render_chat([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], tok, "chatml")
    with pytest.raises(DataError, match="'role' and 'content'"):
        render_chat([{"content": "hi"}], tok, "qa")


def test_stop_token_ids(tok):
    from anima.tokenizer.chat_template import stop_token_ids

    assert stop_token_ids(tok, "chatml") == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    assert stop_token_ids(tok, "qa") == [tok.eos_token_id]
