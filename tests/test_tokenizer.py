"""SentencePiece training + the Hugging Face wrapper: exact parity with SentencePiece on real text."""

from __future__ import annotations

import codecs
import sysconfig
from pathlib import Path

import pytest

from anima.errors import ConfigError, DataError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
UNICODE_LINES = [
    "héllo wörld — naïve café, Ærøskøbing",
    "emoji 😀🎭🚀 and 👩‍👩‍👧 families",
    "日本語のテキストと中文字符",
    "Ελληνικά και русский текст",
    "  two leading spaces,  double  inner, trailing  ",
    "tab\tseparated\tvalues",
    "numbers 1234567890 3.14159 -42",
    "zero\u200bwidth and \u00a0nbsp",
]


def real_corpus() -> list[Path | str]:
    """A few hundred KB of real English text from this Python install (plus the demo plays if fetched)."""
    items: list[Path | str] = []
    plays = Path(__file__).resolve().parents[1] / "data" / "raw" / "plays"
    if plays.is_dir():
        items += sorted(plays.glob("*.md"))[:3]
    for p in [STDLIB / "LICENSE.txt", *sorted(Path("/usr/share/common-licenses").glob("*"))]:
        if p.is_file():
            items.append(p)
    for mod in ("argparse.py", "difflib.py", "textwrap.py", "doctest.py"):
        items.append(STDLIB / mod)
    zen = (STDLIB / "this.py").read_text(encoding="utf-8").split('"""')[1]  # the Zen, rot13-encoded
    items.append(codecs.decode(zen, "rot13"))
    return items


def corpus_lines(items: list[Path | str]) -> list[str]:
    lines: list[str] = []
    for it in items:
        text = it.read_text(encoding="utf-8", errors="replace") if isinstance(it, Path) else it
        lines += [ln for ln in text.splitlines() if ln.strip()]
    return lines


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    from anima.tokenizer.train import train_sentencepiece

    return train_sentencepiece(real_corpus() + UNICODE_LINES[:2], 512, tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def hf_tok(sp_model):
    from anima.tokenizer.chat_template import get_template
    from anima.tokenizer.hf import build_hf_tokenizer

    return build_hf_tokenizer(sp_model, get_template("chatml").chat_template)


def test_special_token_layout(sp_model, hf_tok):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    assert sp.get_piece_size() == len(hf_tok) == 512
    assert [sp.id_to_piece(i) for i in range(6)] == ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    assert (hf_tok.unk_token_id, hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 1, 2, 3)
    assert hf_tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [4, 5]
    assert sp.piece_to_id("<0x00>") == 6 and sp.piece_to_id("<0xFF>") == 261  # bytes follow the specials


def test_parity_with_sentencepiece(sp_model, hf_tok):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    lines = corpus_lines(real_corpus()) + UNICODE_LINES
    assert len(lines) > 2000
    mismatches = [ln for ln in lines if hf_tok.encode(ln) != [1] + sp.encode(ln)]
    assert not mismatches, f"{len(mismatches)} lines differ, e.g. {mismatches[:3]}"
    # multi-line text too (newlines are byte-fallback tokens on both sides)
    block = "\n".join(lines[:50] + UNICODE_LINES)
    assert hf_tok.encode(block) == [1] + sp.encode(block)


def test_byte_fallback_and_decode_round_trip(sp_model, hf_tok):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for ln in UNICODE_LINES + corpus_lines(real_corpus())[:500]:
        ids = hf_tok.encode(ln)
        assert hf_tok.unk_token_id not in ids  # byte fallback: never <unk>
        assert hf_tok.decode(ids, skip_special_tokens=True) == ln == sp.decode(ids[1:])


def test_save_load_round_trip(tmp_path, sp_model, hf_tok):
    import json

    from anima.tokenizer.hf import load_tokenizer, read_template_name, save_tokenizer

    out = tmp_path / "model"
    out.mkdir()
    (out / "anima.json").write_text(json.dumps({"stage": "tokenizer"}))
    save_tokenizer(hf_tok, sp_model, out, "chatml")
    assert (out / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "anima.json").read_text()) == {"stage": "tokenizer", "chat_template": "chatml"}
    assert read_template_name(out) == "chatml"
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == hf_tok.chat_template and cfg["add_bos_token"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir cleaned up

    tok2 = load_tokenizer(out)
    assert tok2.chat_template == hf_tok.chat_template
    assert (tok2.bos_token_id, tok2.eos_token_id, tok2.pad_token_id, tok2.unk_token_id) == (1, 2, 3, 0)
    for ln in UNICODE_LINES + corpus_lines(real_corpus())[:300] + ["<|im_start|>user\nhi<|im_end|>\n"]:
        assert tok2.encode(ln) == hf_tok.encode(ln)
        assert tok2.decode(tok2.encode(ln)) == hf_tok.decode(hf_tok.encode(ln))
    assert tok2.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [4, 5]
    assert "<|im_end|>" in tok2.all_special_tokens


def test_load_missing_dir_is_one_line_error(tmp_path):
    from anima.errors import ModelError
    from anima.tokenizer.hf import load_tokenizer

    with pytest.raises(ModelError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_training_is_deterministic(tmp_path, sp_model):
    from anima.tokenizer.train import train_sentencepiece

    again = train_sentencepiece(real_corpus() + UNICODE_LINES[:2], 512, tmp_path)
    assert again.read_bytes() == sp_model.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.model", "tokenizer.vocab"]


def test_empty_corpus(tmp_path):
    from anima.tokenizer.train import train_sentencepiece

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="corpus is empty"):
        train_sentencepiece([empty, ""], 512, tmp_path / "out")


def test_vocab_too_large_for_corpus(tmp_path):
    from anima.tokenizer.train import train_sentencepiece

    with pytest.raises(DataError, match=r"tokenizer\.vocab_size=5000 is too large .* <= \d+") as e:
        train_sentencepiece(["a tiny corpus of a few words", "and another line"], 5000, tmp_path)
    assert "\n" not in str(e.value)


def test_vocab_below_byte_fallback_minimum(tmp_path):
    from anima.tokenizer.train import train_sentencepiece

    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size=200 .* at least 262"):
        train_sentencepiece(["some text"], 200, tmp_path)
