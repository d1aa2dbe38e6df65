"""Terminal chat with ratings and corrections (``anima chat``).

Replies stream token by token. After each reply the user rates it: ``y`` appends the approved pair to the
feedback store, ``n`` asks the model again (up to ``max_retries`` fresh samples) and then offers to type a
better reply, which is stored as a correction and answered from then on for the same normalized prompt
(the corrections lookup is consulted before the model). ``s`` or an empty answer skips.

The same loop serves a person at a terminal (rich output, line editing via ``input``) and a script piping a
conversation into stdin (plain text out, lines read one by one, each echoed so the log reads as a
transcript; EOF ends cleanly). The history sent to the model is trimmed to its context window by the engine's
template renderer (oldest exchanges first); the full transcript is kept for ``/save``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from anima.atomic import PRIVATE, atomic_write_text
from anima.data.feedback import CorrectionIndex, append_feedback, make_record
from anima.errors import AnimaError
from anima.generation.sampling import SamplingParams

HELP = """\
commands:
  /reset                 forget the conversation so far
  /params                show sampling settings and the decode step; /params temperature=0.5 top_p=0.9 to change them
  /save [path]           save the transcript as JSON
  /help                  this help
  /quit                  leave (Ctrl-D does too)
after each reply: rate [y/n/s]  y = good (saved), n = try again / type a better reply, s or Enter = skip"""


class ChatSession:
    """One conversation with one model, plus where its feedback goes."""

    def __init__(
        self,
        engine: Any,
        params: SamplingParams | None = None,
        feedback_path: str | os.PathLike | None = None,
        model_uri: str = "",
        max_retries: int = 2,
        console: Any = None,
        *,
        model_version: str | None = None,
        system_prompt: str | None = None,
        transcript_dir: str | os.PathLike | None = None,
        assistant_name: str = "anima",
    ) -> None:
        if max_retries < 0:
            raise AnimaError(f"chat.max_retries={max_retries}: must be >= 0")
        self.engine = engine
        self.params = replace(params or SamplingParams()).validate()
        self.feedback_path = Path(feedback_path) if feedback_path is not None else None
        self.model_uri = model_uri or str(getattr(engine, "name", ""))
        self.model_version = model_version
        self.max_retries = int(max_retries)
        self.console = console
        self.system_prompt = system_prompt
        self.transcript_dir = Path(transcript_dir) if transcript_dir is not None else Path.cwd()
        self.assistant_name = assistant_name
        self.history: list[dict[str, str]] = []
        self.n_corrupt = 0
        self.corrections = CorrectionIndex()
        if self.feedback_path is not None:
            self.corrections, self.n_corrupt = CorrectionIndex.load(self.feedback_path)

    # -- conversation ------------------------------------------------------------------------------------

    def messages(self) -> list[dict[str, str]]:
        """What is sent to the model: the system prompt (if any) and the history."""
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return head + [dict(m) for m in self.history]

    def stream_reply(self, messages: list[dict[str, str]], attempt: int = 0) -> Iterator[str]:
        """Stream the model's reply; a retry (``attempt`` > 0) with a fixed seed uses seed + attempt."""
        params = self.params
        if attempt and params.seed is not None:
            params = replace(params, seed=params.seed + attempt)
        return self.engine.stream_chat(messages, params)

    def lookup(self, user_text: str) -> str | None:
        return self.corrections.lookup(user_text)

    def reset(self) -> None:
        self.history.clear()

    # -- feedback ----------------------------------------------------------------------------------------

    def record(self, prompt: list[dict[str, str]], reply: str, rating: str, correction: str | None = None) -> bool:
        """Append a rated pair to the feedback store (and a correction to the lookup). False when not stored."""
        if correction:
            self.corrections.add(prompt, correction)
        if self.feedback_path is None:
            return False
        rec = make_record(prompt, reply, rating, correction=correction, model=self.model_uri,
                          model_version=self.model_version, sampling=self.params)
        append_feedback(self.feedback_path, rec)
        return True

    # -- commands ----------------------------------------------------------------------------------------

    def params_text(self) -> str:
        return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in asdict(self.params).items())

    def set_params(self, assignments: list[str]) -> str:
        """Apply ``key=value`` assignments to the sampling settings (all or none); returns the new settings."""
        types = {f.name: f for f in fields(SamplingParams)}
        current = asdict(self.params)
        changes: dict[str, Any] = {}
        for a in assignments:
            key, sep, raw = a.partition("=")
            key = key.strip()
            if not sep or key not in types:
                raise AnimaError(f"/params: expected key=value with key in {', '.join(types)}; got {a!r}")
            changes[key] = _parse_value(key, raw.strip(), current[key])
        new = replace(self.params, **changes).validate()
        self.params = new
        return self.params_text()

    def transcript(self) -> dict[str, Any]:
        return {
            "model": self.model_uri,
            "model_version": self.model_version,
            "sampling": asdict(self.params),
            "messages": self.messages(),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the transcript as JSON (temp file + ``os.replace``)."""
        if path is None:
            path = self.transcript_dir / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.transcript(), ensure_ascii=False, indent=2) + "\n",
                                 mode=PRIVATE)  # a conversation: owner-only


def _parse_value(key: str, raw: str, current: Any) -> Any:
    if key == "stop":
        if raw in ("", "[]", "none", "None"):
            return []
        if raw.startswith("["):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise AnimaError(f"/params stop={raw}: expected a JSON list of strings") from None
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise AnimaError(f"/params stop={raw}: expected a JSON list of strings")
            return value
        return [raw]
    if key == "seed":
        if raw.lower() in ("none", "null", ""):
            return None
        try:
            return int(raw)
        except ValueError:
            raise AnimaError(f"/params seed={raw}: expected an integer or none") from None
    try:
        return int(raw) if isinstance(current, int) and not isinstance(current, bool) else float(raw)
    except ValueError:
        kind = "an integer" if isinstance(current, int) else "a number"
        raise AnimaError(f"/params {key}={raw}: expected {kind}") from None


# ------------------------------------------------------------------------------------------------ terminal I/O


class _IO:
    """Line input and streamed output, rich on a terminal, plain text otherwise."""

    def __init__(self, input_stream: IO[str], output: IO[str], console: Any) -> None:
        self.input = input_stream
        self.output = output
        self.tty_out = _isatty(output)
        self.interactive = _isatty(input_stream) and input_stream is sys.stdin and output is sys.stdout
        self.console = console
        if self.console is None and self.tty_out:
            from rich.console import Console

            self.console = Console(file=output, highlight=False, soft_wrap=True)

    def read(self, prompt: str) -> str | None:
        """One line without its newline, or None at EOF."""
        if self.interactive:
            try:
                return input(self._styled_prompt(prompt))
            except EOFError:
                self.write("\n")
                return None
        self.write(prompt)
        line = self.input.readline()
        if not line:
            self.write("\n")
            return None
        line = line.rstrip("\r\n")
        if not _isatty(self.input):
            self.write(line + "\n")  # echo: the output then reads like the conversation
        return line

    def _styled_prompt(self, prompt: str) -> str:
        # input() draws the prompt itself (line editing needs to know its width): keep it plain text.
        return prompt

    def write(self, text: str) -> None:
        self.output.write(text)
        self.output.flush()

    def info(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, style="dim", markup=False)
        else:
            self.write(text + "\n")

    def error(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, style="bold red", markup=False)
        else:
            self.write(f"error: {text}\n")

    def reply_start(self, name: str) -> None:
        if self.console is not None:
            self.console.print(f"{name}> ", style="bold cyan", end="", markup=False)
        else:
            self.write(f"{name}> ")

    def piece(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, style="cyan", end="", markup=False, highlight=False)
        else:
            self.write(text)

    def reply_end(self) -> None:
        self.write("\n")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _show_reply(io: _IO, session: ChatSession, pieces: Iterator[str]) -> tuple[str, bool]:
    """Stream pieces to the screen; returns (full text, interrupted)."""
    io.reply_start(session.assistant_name)
    parts: list[str] = []
    interrupted = False
    try:
        for piece in pieces:
            parts.append(piece)
            io.piece(piece)
    except KeyboardInterrupt:
        interrupted = True
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    io.reply_end()
    text = "".join(parts)
    if interrupted:
        io.info("(interrupted)")
    elif not text.strip():  # a blank line alone reads like a hang or a bug; small models do end at once
        io.info("(empty reply: the model ended its turn at once)")
    return text, interrupted


def run_repl(session: ChatSession, input_stream: IO[str] | None = None, output: IO[str] | None = None) -> int:
    """Run the chat loop until /quit or end of input; returns an exit status (0)."""
    io = _IO(input_stream or sys.stdin, output or sys.stdout, session.console)
    io.info(f"chatting with {session.model_uri or 'the model'} -- /help for commands, /quit to leave")
    if session.n_corrupt:
        io.info(f"note: skipped {session.n_corrupt} corrupt line(s) in {session.feedback_path}")
    if session.feedback_path is None:
        io.info("note: feedback is not saved in this session (no feedback path)")
    try:
        while True:
            line = io.read("you> ")
            if line is None:
                return 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if _command(io, session, text) == "quit":
                    return 0
                continue
            if _turn(io, session, line) == "quit":
                return 0
    except KeyboardInterrupt:
        io.write("\n")
        return 0


def _command(io: _IO, session: ChatSession, text: str) -> str | None:
    name, *args = text.split()
    name = name.lower()
    if name in ("/quit", "/exit", "/q"):
        return "quit"
    if name == "/help":
        io.info(HELP)
    elif name == "/reset":
        session.reset()
        io.info("(conversation reset)")
    elif name == "/params":
        try:
            shown = f"{session.params_text()}\ndecode: {session.engine.backend_status()}"
            io.info(session.set_params(args) if args else shown)
        except AnimaError as e:
            io.error(str(e))
    elif name == "/save":
        try:
            path = session.save(" ".join(args) if args else None)
        except (OSError, AnimaError) as e:
            io.error(f"/save failed: {e}")
        else:
            io.info(f"(saved transcript to {path})")
    else:
        io.error(f"unknown command {name}; /help lists the commands")
    return None


def _turn(io: _IO, session: ChatSession, user_text: str) -> str | None:
    """One user message: answer (from a correction or the model), then collect the rating."""
    session.history.append({"role": "user", "content": user_text})
    prompt = session.messages()
    stored = session.lookup(user_text)
    if stored is not None:
        io.info("(answering from your earlier correction)")
        io.reply_start(session.assistant_name)
        io.piece(stored)
        io.reply_end()
        session.history.append({"role": "assistant", "content": stored})
        return None
    try:
        reply, _ = _show_reply(io, session, session.stream_reply(prompt))
    except AnimaError as e:
        session.history.pop()
        io.error(str(e))
        return None
    session.history.append({"role": "assistant", "content": reply})

    retries = 0
    while True:
        answer = io.read("rate [y/n/s]: ")
        if answer is None:
            return "quit"
        a = answer.strip().lower()
        if a in ("", "s", "skip"):
            return None
        if a in ("y", "yes"):
            saved = session.record(prompt, reply, "up")
            io.info("(saved as a good reply)" if saved else "(noted)")
            return None
        if a in ("n", "no"):
            if retries < session.max_retries:
                retries += 1
                io.info(f"(trying again, {retries}/{session.max_retries})")
                try:
                    reply, _ = _show_reply(io, session, session.stream_reply(prompt, attempt=retries))
                except AnimaError as e:
                    io.error(str(e))
                    return None
                session.history[-1] = {"role": "assistant", "content": reply}
                continue
            better = io.read("better reply (empty to skip): ")
            if better is None:
                return "quit"
            if better.strip():
                better = better.strip()
                saved = session.record(prompt, reply, "down", correction=better)
                session.history[-1] = {"role": "assistant", "content": better}
                io.info("(correction saved; it will be used for this prompt from now on)" if saved
                        else "(correction used for this session)")
            return None
        if a.startswith("/"):  # a command typed instead of a rating: skip the rating and run it
            return _command(io, session, answer.strip())
        io.info("please answer y (good), n (try again) or s (skip)")
