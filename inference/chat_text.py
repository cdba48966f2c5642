"""Chat input hygiene and language handling, shared by the chat tab and ``POST /api/chat``.

Every check raises a typed :class:`~inference.errors.DoctorAIError` whose message says what is
allowed, so both edges answer bad input with a clear 4xx instead of a crash.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from inference.errors import DoctorAIError, InvalidInput
from inference.kb import arabic_ratio

Language = Literal["en", "ar"]
Role = Literal["user", "assistant"]

DISCLAIMER = {
    "en": (
        "General health information from public sources, not medical advice. "
        "It cannot diagnose you; ask a qualified clinician about your own situation, "
        "and call your local emergency number in an emergency."
    ),
    "ar": (
        "معلومات صحية عامة من مصادر عامة، وليست نصيحة طبية ولا تشخيصًا. "
        "استشر طبيبًا مؤهلًا بشأن حالتك، واتصل برقم الطوارئ المحلي في الحالات الطارئة."
    ),
}

_KEEP_FORMAT = {"\u200c", "\u200d"}  # ZWNJ / ZWJ are meaningful in Arabic-script text
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


class MessageTooLong(DoctorAIError):
    """A chat message over the configured length limit."""

    status_code = 413


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation."""

    role: Role
    content: str


def clean_message(text: object, max_chars: int, *, what: str = "message") -> str:
    """Validate and normalise one user message; raise a typed error for anything unusable.

    Rejected: non-text, NUL bytes and other binary junk, control characters (other than tab
    and newlines), empty or punctuation-only text, more than ``max_chars`` characters.
    Normalised: Unicode NFC, invisible formatting characters removed, runs of spaces collapsed.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"the {what} must be text")
    if len(text) > 4 * max_chars:  # do not even scan megabytes of input
        raise MessageTooLong(f"the {what} is {len(text):,} characters long; the limit is {max_chars:,}")
    if "\x00" in text:
        raise InvalidInput(f"the {what} contains binary data (NUL bytes); send plain text")
    text = unicodedata.normalize("NFC", text)
    junk = sum(1 for c in text if c == "\ufffd" or unicodedata.category(c) in ("Co", "Cn", "Cs"))
    if junk and (junk >= 8 or junk / len(text) > 0.05):
        raise InvalidInput(f"the {what} looks like binary data, not text; send plain text")
    # A few unpaired UTF-16 surrogates (a client cut an emoji in half) are tolerated above; as
    # U+FFFD they can be encoded, where the raw surrogate would crash the tokenizer (a 500).
    text = re.sub("[\ud800-\udfff]", "\ufffd", text)
    controls = sorted({c for c in text if unicodedata.category(c) == "Cc" and c not in _ALLOWED_CONTROLS})
    if controls:
        listed = ", ".join(f"U+{ord(c):04X}" for c in controls[:3])
        raise InvalidInput(f"the {what} contains control characters ({listed}); send plain text")
    text = "".join(c for c in text if unicodedata.category(c) != "Cf" or c in _KEEP_FORMAT)
    text = re.sub(r"[ \t\u00a0]+", " ", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        raise InvalidInput(f"the {what} is empty; type a health question")
    if len(text) > max_chars:
        raise MessageTooLong(f"the {what} is {len(text):,} characters long; the limit is {max_chars:,}")
    if not any(c.isalnum() for c in text):
        raise InvalidInput(f"the {what} has no words in it; type a health question")
    return text


def clean_history(history: Iterable[Any] | None, max_turns: int, max_chars: int) -> list[Turn]:
    """Earlier turns as :class:`Turn`; accepts ``{role, content}`` mappings or objects.

    Only the last ``max_turns`` are kept. User turns get the same checks as a message;
    assistant turns (our own earlier answers) may be longer.
    """
    if history is None:
        return []
    if isinstance(history, str | bytes) or not isinstance(history, Iterable):
        raise InvalidInput("history must be a list of {role, content} messages")
    turns: list[Turn] = []
    for i, item in enumerate(list(history)[-max_turns:] if max_turns else []):
        role = item.get("role") if isinstance(item, Mapping) else getattr(item, "role", None)
        content = item.get("content") if isinstance(item, Mapping) else getattr(item, "content", None)
        if role not in ("user", "assistant"):
            raise InvalidInput(f"history[{i}].role must be 'user' or 'assistant'")
        content = content_text(content)
        limit = max_chars if role == "user" else 8 * max_chars
        turns.append(Turn(role, clean_message(content, limit, what=f"history[{i}] content")))
    return turns


def content_text(content: object) -> str:
    """The text of a chat message's content: a string, or Gradio's list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, list | tuple):
        return "\n".join(t for t in (content_text(c) for c in content) if t)
    return "" if content is None else str(content)


def detect_language(text: str) -> Language:
    """``ar`` when most letters are Arabic script, else ``en``."""
    return "ar" if arabic_ratio(text) >= 0.3 else "en"
