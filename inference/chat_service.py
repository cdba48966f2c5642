"""The chat pipeline shared by the chat tab, ``POST /api/chat`` and gradio_client.

message -> validation (typed 4xx errors) -> language -> the shared chat model (loaded by the
model manager; the knowledge base is built on first use when only its corpus is configured)
-> streamed or complete answer with sources and the disclaimer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from inference.backends.chat import INSTALL_KB, ChatAnswer, ChatChunk, ChatModel
from inference.chat_text import DISCLAIMER, Language, clean_history, clean_message, detect_language
from inference.errors import InferenceError, UnknownModel
from inference.manager import ModelManager, ModelState
from inference.runtime import Runtime
from settings import Settings

log = logging.getLogger(__name__)


_NEGATIVE = re.compile(r"^(no|not|non|normal|other|others|benign|healthy)\b", re.IGNORECASE)


@dataclass(frozen=True)
class ImageContext:
    """The latest image analysis of a session, as the chat tab asks about it.

    Frozen and hashable on purpose: Gradio's ``State`` compares values by hash to fire ``change``.
    """

    model_id: str
    model_name: str
    model_version: str
    label: str
    label_name: str
    probabilities: tuple[tuple[str, float], ...]  # (class display name, probability), most likely first
    topic: str  # the condition to ask about: the prediction, or the disease a negative result rules out
    topic_description: str = ""

    @classmethod
    def from_result(cls, result: Any) -> ImageContext | None:
        """From an :class:`inference.service.AnalysisResult` (None stays None)."""
        if result is None:
            return None
        spec = result.spec
        names = spec.class_names
        classes = {c.id: c for c in spec.classes}
        ranked = sorted(result.probabilities.items(), key=lambda kv: (-float(kv[1]), kv[0]))
        topic = result.label
        if _is_negative(result.label, names.get(result.label, ""), spec.positive_class):
            if spec.positive_class:
                topic = spec.positive_class
            else:
                topic = next((c for c, _ in ranked if not _is_negative(c, names.get(c, ""), None)), result.label)
        return cls(
            model_id=spec.id,
            model_name=spec.display_name,
            model_version=spec.version,
            label=result.label,
            label_name=result.label_name,
            probabilities=tuple((names.get(k, k), round(float(v), 4)) for k, v in ranked),
            topic=names.get(topic, topic),
            topic_description=classes[topic].description if topic in classes else "",
        )

    def summary(self) -> str:
        """One line: model, predicted class and probabilities."""
        probs = ", ".join(f"{k} {v:.0%}" for k, v in self.probabilities)
        return f"The {self.model_name} model (v{self.model_version}) predicted {self.label_name} ({probs})."

    def question(self) -> str:
        """What the "ask about my result" button asks (about the disease, also for a negative result)."""
        about = f" ({self.topic_description.rstrip('.')})" if self.topic_description else ""
        if self.topic == self.label_name:
            return f"What is {self.topic}{about}, and what should I know about it?"
        return f"My image was classified as {self.label_name}. What is {self.topic}{about}, and how is it diagnosed?"


def _is_negative(class_id: str, name: str, positive: str | None) -> bool:
    if positive is not None:
        return class_id != positive
    return bool(_NEGATIVE.match(class_id) or _NEGATIVE.match(name))


def _by_p(item: tuple[str, float]) -> tuple[float, str]:
    return (-item[1], item[0])


class ChatService:
    """Validates, picks the language, gets the shared chat model and answers. Thread-safe."""

    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings
        ids = [s.id for s in manager.registry if s.backend == "chat"]
        self.model_id: str | None = ids[0] if ids else None

    # ---------------------------------------------------------------- state
    def _require_id(self) -> str:
        if self.model_id is None:
            raise UnknownModel("no chat model in the registry (add a spec with backend: chat)")
        return self.model_id

    def install_help(self) -> str | None:
        """A "how to install" message while the chat cannot answer, else None."""
        if self.model_id is None:
            return "No chat model is registered: add the `chat` spec to assets/models.yaml."
        missing = self.manager.missing_weights_message(self.model_id)
        if missing:
            return (
                f"{missing}.\n\nFetch the knowledge base once with `{INSTALL_KB}` (downloads MedQuAD from GitHub, "
                "then a few minutes of indexing), or set `DOCTORAI_KB_SOURCE` to a local "
                "`medquad.jsonl.gz` and it is built on the first question."
            )
        return None

    def state(self) -> ModelState | None:
        return None if self.model_id is None else self.manager.state(self.model_id)

    def loaded_model(self) -> ChatModel | None:
        """The chat model if it is already loaded (never loads)."""
        if self.model_id is None or self.model_id not in self.manager.loaded():
            return None
        model = self.manager.get_model(self.model_id)
        return model if isinstance(model, ChatModel) else None

    def model(self) -> ChatModel:
        """The shared chat model, loading it (and building the index if needed) on first use."""
        model = self.manager.get_model(self._require_id())
        if not isinstance(model, ChatModel):
            raise InferenceError(f"{self.model_id} is not a chat model")
        return model

    # ---------------------------------------------------------------- answering
    def prepare(self, message: object, history: Iterable[Any] | None = None) -> tuple[str, Language, list[Any]]:
        """Validated message, its language and validated history (raises typed 4xx errors)."""
        s = self.settings
        text = clean_message(message, s.chat_max_chars)
        turns = clean_history(history, s.chat_max_history, s.chat_max_chars)
        return text, detect_language(text), turns

    def stream(
        self, message: object, history: Iterable[Any] | None = None, image: ImageContext | None = None
    ) -> Iterator[ChatChunk]:
        """Text deltas, then a final chunk carrying the :class:`ChatAnswer`."""
        text, language, turns = self.prepare(message, history)
        note = image.summary() if image else None
        yield from self.model().respond(text, language=language, history=turns, note=note, stream=True)

    def ask(
        self, message: object, history: Iterable[Any] | None = None, image: ImageContext | None = None
    ) -> ChatAnswer:
        """The complete answer (no streaming; the generator may use beam search)."""
        text, language, turns = self.prepare(message, history)
        note = image.summary() if image else None
        return self.model().answer(text, language=language, history=turns, note=note)

    @staticmethod
    def disclaimer(language: Language = "en") -> str:
        return DISCLAIMER[language]


def chat_service(runtime: Runtime) -> ChatService:
    """The chat service over ``runtime``'s shared manager (which knows the ``chat`` kind)."""
    return ChatService(runtime.manager, runtime.settings)


__all__ = ["ChatAnswer", "ChatChunk", "ChatService", "ImageContext", "chat_service"]
