"""Pieces shared by every tab: notices, model cards, error conversion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from inference.errors import DoctorAIError
from inference.registry import ModelSpec
from inference.service import RESEARCH_NOTICE

NOTICE_HTML = (
    f'<div class="doctorai-notice" role="note">⚠️ <b>{RESEARCH_NOTICE}</b> '
    "Results must be reviewed by a qualified clinician.</div>"
)

_CARD_FIELDS = [
    ("summary", "Summary"),
    ("architecture", "Architecture"),
    ("input", "Input"),
    ("training_data", "Training data and licence"),
    ("split", "Split"),
    ("metrics", "Validation metrics"),
    ("calibration", "Calibration"),
    ("cost", "CPU cost and size"),
    ("limits", "Known limits"),
]


def model_card_markdown(spec: ModelSpec) -> str:
    """The card of one model as Markdown, always ending with the research-use notice."""
    lines = [f"### {spec.display_name} (`{spec.id}` v{spec.version})", ""]
    for key, title in _CARD_FIELDS:
        value = spec.card.get(key)
        if value:
            lines.append(f"**{title}.** {value}")
            lines.append("")
    if spec.classes:
        lines.append("**Classes (output order).**")
        lines.extend(f"- `{c.id}`: {c.name}. {c.description}" for c in spec.classes)
        lines.append("")
    lines.append(f"_{RESEARCH_NOTICE}_")
    return "\n".join(lines)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn domain errors into ``gr.Error`` so the user sees what is allowed."""
    try:
        yield
    except DoctorAIError as exc:
        raise gr.Error(exc.message) from exc


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
