"""Chat template presets: one source of truth for training masks, inference prompts and exported templates.

Each preset has a Python renderer that emits text segments flagged "assistant" or not; ``render_chat``
joins them, remembers the character spans of assistant segments, tokenizes the whole string once with
offsets and marks the tokens that overlap those spans. The preset's Jinja ``chat_template`` (stored in
tokenizer_config.json for HF ``apply_chat_template``, llama.cpp, vLLM...) renders the same text; a test
checks it. Assistant spans use HF's ``{% generation %}`` tags, so ``return_assistant_tokens_mask`` works too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import TYPE_CHECKING, Any

from anima.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")

# Rendered text as (text, is_assistant) segments. A preset's turn renderer gives one message's segments,
# given the tokenizer's EOS string; the frame around the turns (BOS first, the generation prompt last) is shared.
Segments = list[tuple[str, bool]]
TurnRenderer = Callable[[dict, str], Segments]


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format preset. ``end_of_turn`` is the token that ends an assistant turn (a stop token)."""

    name: str
    description: str
    chat_template: str
    end_of_turn: str  # literal token text, or "eos" for the tokenizer's EOS token
    turn: TurnRenderer

    def end_of_turn_token(self, tokenizer: PreTrainedTokenizerBase) -> str:
        return tokenizer.eos_token if self.end_of_turn == "eos" else self.end_of_turn

    def render(self, messages: Sequence[dict], add_generation_prompt: bool, bos: str, eos: str) -> Segments:
        """BOS, every message's segments, then (on request) the generation prompt: the assistant turn's
        segments before its content, so a prompt is by construction a prefix of the text training saw."""
        segs: Segments = [(bos, False)]
        for m in messages:
            segs.extend(self.turn(m, eos))
        if add_generation_prompt:
            segs.extend(takewhile(lambda seg: not seg[1], self.turn({"role": "assistant", "content": ""}, eos)))
        return segs


@dataclass(frozen=True)
class RenderedChat:
    input_ids: list[int]
    assistant_mask: list[int]  # 1 where the token is (part of) assistant content or its end-of-turn token


def _chatml_turn(m: dict, eos: str) -> Segments:
    is_reply = m["role"] == "assistant"
    return [(f"<|im_start|>{m['role']}\n", False), (m["content"] + "<|im_end|>", is_reply), ("\n", False)]


_CHATML_JINJA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' ~ message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _qa_turn(m: dict, eos: str) -> Segments:
    # The assistant segment starts with the space after "A:", so the generation prompt "A:" is a token-wise
    # prefix of the trained text (a trailing "▁" token in the prompt would not be).
    if m["role"] == "system":
        return [(m["content"] + "\n", False)]
    if m["role"] == "user":
        return [("Q: " + m["content"] + "\n", False)]
    return [("A:", False), (" " + m["content"] + eos, True), ("\n", False)]


_QA_JINJA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'Q: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'A:' }}"
    "{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ raise_exception('unknown chat role: ' ~ message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A:' }}{% endif %}"
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate(
            name="chatml",
            description="ChatML: <|im_start|>role\\ncontent<|im_end|>; turns end with <|im_end|>",
            chat_template=_CHATML_JINJA,
            end_of_turn="<|im_end|>",
            turn=_chatml_turn,
        ),
        ChatTemplate(
            name="qa",
            description="Plain 'Q: ...' / 'A: ...' lines; system is a preamble line; turns end with EOS </s>",
            chat_template=_QA_JINJA,
            end_of_turn="eos",
            turn=_qa_turn,
        ),
    )
}


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """Look up a preset by name (a ChatTemplate passes through)."""
    if isinstance(name, ChatTemplate):
        return name
    try:
        return TEMPLATES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown chat_template {name!r}; known presets: {', '.join(sorted(TEMPLATES))}") from None


def _check_messages(messages: Sequence[Any]) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"chat message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise DataError(f"chat message {i} has unknown role {m['role']!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise DataError(f"chat message {i} ({m['role']}) content must be a string, got {type(m['content']).__name__}")
        out.append(m)
    return out


def render_text(
    messages: Sequence[dict], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | str,
    add_generation_prompt: bool = False,
) -> str:
    """The rendered chat as text (what the Jinja ``chat_template`` also produces)."""
    tpl = get_template(template)
    segs = tpl.render(_check_messages(messages), add_generation_prompt, tokenizer.bos_token, tokenizer.eos_token)
    return "".join(text for text, _ in segs)


def _render_once(
    messages: list[dict], tokenizer: PreTrainedTokenizerBase, tpl: ChatTemplate, add_generation_prompt: bool
) -> RenderedChat:
    segs = tpl.render(messages, add_generation_prompt, tokenizer.bos_token, tokenizer.eos_token)
    parts, spans, pos = [], [], 0
    for text, is_assistant in segs:
        if is_assistant and text:
            spans.append((pos, pos + len(text)))
        parts.append(text)
        pos += len(text)
    enc = tokenizer("".join(parts), add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    mask, j = [], 0
    for start, end in offsets:  # offsets and spans are both increasing: one merge-like pass
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        mask.append(int(j < len(spans) and start < end and start < spans[j][1] and end > spans[j][0]))
    if not ids or ids[0] != tokenizer.bos_token_id:
        raise ConfigError(f"chat template {tpl.name!r} did not render BOS first for this tokenizer")
    return RenderedChat(ids, mask)


def _exchanges(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """Split into (system messages before the first turn, exchanges each starting at a user message)."""
    head: list[dict] = []
    groups: list[list[dict]] = []
    for m in messages:
        if not groups and m["role"] == "system":
            head.append(m)
        elif m["role"] == "user" or not groups:
            groups.append([m])
        else:
            groups[-1].append(m)
    return head, groups


def render_chat(
    messages: Sequence[dict],
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate | str,
    add_generation_prompt: bool = False,
    max_length: int | None = None,
) -> RenderedChat:
    """Token ids (BOS first) and the assistant mask (1 on assistant content and its end-of-turn token).

    Truncation to ``max_length`` tokens: whole oldest exchanges (a user message and the replies after it)
    are dropped, keeping the leading system message(s), until the chat fits. If the last exchange alone
    (with the system message) is still too long, the text is cut from the left: BOS is kept, followed by
    the last ``max_length - 1`` tokens, so the final assistant reply (or, with ``add_generation_prompt``,
    the end of the prompt) survives. Roles: system, user, assistant; anything else is a DataError.
    """
    tpl = get_template(template)
    msgs = _check_messages(messages)
    out = _render_once(msgs, tokenizer, tpl, add_generation_prompt)
    if max_length is None or len(out.input_ids) <= max_length:
        return out
    if max_length < 2:
        raise ConfigError(f"max_length={max_length} is too small for a chat (BOS + at least one token)")
    head, groups = _exchanges(msgs)
    while len(groups) > 1:
        groups = groups[1:]
        out = _render_once(head + [m for g in groups for m in g], tokenizer, tpl, add_generation_prompt)
        if len(out.input_ids) <= max_length:
            return out
    keep = max_length - 1
    return RenderedChat(out.input_ids[:1] + out.input_ids[-keep:], out.assistant_mask[:1] + out.assistant_mask[-keep:])


def render_prompt(
    messages: Sequence[dict], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | str,
    max_length: int | None = None,
) -> list[int]:
    """Prompt ids for generation: the chat plus the assistant header (a token-wise prefix of training text)."""
    return render_chat(messages, tokenizer, template, add_generation_prompt=True, max_length=max_length).input_ids


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate | str) -> list[int]:
    """Ids that end a generated assistant turn: the template's end-of-turn token, plus EOS."""
    tpl = get_template(template)
    ids = [tokenizer.convert_tokens_to_ids(tpl.end_of_turn_token(tokenizer)), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))
