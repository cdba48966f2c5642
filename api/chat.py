"""``POST /api/chat``: a grounded answer with its sources. Domain errors become HTTP errors via
:func:`api.routes.install_error_handlers` (400/413 bad input, 503 no knowledge base)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.logs import current_request_id
from auth.audit import AuditEntry
from auth.web import Analyst, AuthContext, client_ip
from inference.chat_service import chat_service
from inference.runtime import Runtime

log = logging.getLogger(__name__)


class ChatTurnIn(BaseModel):
    """One earlier message."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """``{message, history?}``; history is the earlier ``{role, content}`` messages, oldest first."""

    model_config = ConfigDict(extra="ignore")
    message: str = Field(description="the question, English or Arabic")
    history: list[ChatTurnIn] | None = None


class SourceOut(BaseModel):
    title: str
    url: str
    score: float = Field(description="cosine similarity of the passage to the question (0-1)")


class ChatResponse(BaseModel):
    response: str
    sources: list[SourceOut]
    language: Literal["en", "ar"]
    disclaimer: str
    model_version: str
    mode: Literal["retrieval", "generator", "no_match", "unsupported_language"]
    matched: bool = Field(description="false when nothing in the knowledge base matched well enough")
    timing_ms: float


def build_chat_router(runtime: Runtime, auth: AuthContext) -> APIRouter:
    """The chat route; registers the chat kind with the runtime's manager."""
    router = APIRouter(prefix="/api", tags=["chat"])
    service = chat_service(runtime)

    @router.post("/chat", response_model=ChatResponse)
    @router.post("/chatbot", response_model=ChatResponse, include_in_schema=False)  # the original app's path
    def chat(body: ChatRequest, request: Request, principal: Analyst) -> ChatResponse:
        """Answer a health question from the knowledge base (not medical advice). Audited with
        the SHA-256 of the message, not its text."""
        entry = AuditEntry(
            action="chat",
            username=principal.username,
            role=principal.role,
            model_id="chat",
            client_ip=client_ip(request),
            request_id=current_request_id(),
        )
        with auth.audit.track(entry, body.message.encode("utf-8", "replace")):
            auth.service.check_analysis_rate(principal.username)
            answer = service.ask(body.message, [t.model_dump() for t in body.history or []])
            entry.model_version = answer.model_version
            entry.result = f"{answer.mode}, {len(answer.sources)} sources, {answer.language}"
        return ChatResponse(
            response=answer.response,
            sources=[SourceOut(title=s.title, url=s.url, score=s.score) for s in answer.sources],
            language=answer.language,
            disclaimer=answer.disclaimer,
            model_version=answer.model_version,
            mode=answer.mode,
            matched=answer.matched,
            timing_ms=round(answer.timing_ms.get("total", 0.0), 2),
        )

    return router


__all__ = ["ChatRequest", "ChatResponse", "build_chat_router"]
