"""Pieces shared by every tab: notices, model cards, error conversion."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from auth.audit import AuditEntry
from auth.errors import AuthenticationRequired, Forbidden
from auth.service import Permission, UserInfo
from auth.web import AuthContext
from inference.errors import DoctorAIError
from inference.registry import ModelSpec
from inference.service import RESEARCH_NOTICE

NOTICE_HTML = (
    f'<div class="doctorai-notice" role="note"><b>{RESEARCH_NOTICE}</b> '
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
    ("shift", "Robustness to acquisition shift"),
    ("cv", "Cross-validation"),
    ("gradcam", "Grad-CAM"),
    ("cost", "CPU cost and size"),
    ("limits", "Known limits"),
]


def model_card_markdown(spec: ModelSpec) -> str:
    """The card of one model as Markdown, always ending with the research-use notice."""
    lines = [f"### {spec.display_name} (`{spec.id}` v{spec.version})", ""]
    if spec.below_floor:
        lines += [
            f"**Status: experimental.** Not presented as a working model: {spec.below_floor}. "
            "Served only where DOCTORAI_EXPERIMENTAL_MODELS=true.",
            "",
        ]
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
    # functools.wraps keeps the signature visible (inspect follows __wrapped__), so Gradio still
    # injects a ``gr.Request`` parameter and builds the same API schema.
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper


class UiAuth:
    """Who is acting in a Gradio event, with the same checks and audit as the REST API.

    The auth gate has already refused anonymous requests; ``request.username`` comes from the
    gate through Gradio's ``auth_dependency``. Roles are re-read from the database, so a role
    change or a disabled account takes effect at the next click.
    """

    def __init__(self, auth: AuthContext) -> None:
        self.auth = auth

    def user(self, request: gr.Request | None) -> UserInfo:
        name = getattr(request, "username", None) if request is not None else None
        user = self.auth.service.get_user(name) if name else None
        if user is None or not user.active:
            raise AuthenticationRequired("your session has ended; reload the page and log in again")
        return user

    @contextmanager
    def audited(
        self,
        request: gr.Request | None,
        action: str,
        *,
        permission: Permission = Permission.ANALYSE,
        model_id: str | None = None,
        model_version: str | None = None,
        data: bytes | None = None,
        rate_limited: bool = True,
    ) -> Iterator[AuditEntry]:
        """Check the user and the rate limit, then audit the block; domain errors -> ``gr.Error``."""
        with user_errors():
            user = self.user(request)
            client = getattr(request, "client", None)
            entry = AuditEntry(
                action=action,
                username=user.username,
                role=user.role,
                model_id=model_id,
                model_version=model_version,
                client_ip=getattr(client, "host", None),
                request_id=f"ui-{uuid.uuid4().hex[:16]}",
            )
            with self.auth.audit.track(entry, data):
                if not user.can(permission):
                    raise Forbidden(f"your role ({user.role}) may not do this")
                if rate_limited:
                    self.auth.service.check_analysis_rate(user.username)
                yield entry
