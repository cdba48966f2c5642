"""The medical chat tab: streamed, sourced answers from the knowledge base.

Wiring: ``build_ui`` creates one ``gr.State`` for the session's latest image result and passes it
to every ``build_image_tab(runtime, spec, last_image)`` (which writes an
:class:`~inference.chat_service.ImageContext` into it after each analysis) and to
``build_chat_tab(runtime, last_image)`` (which then shows an "Ask about my image result" button).

gradio_client: ``Client(url).predict("What causes gout?", api_name="/chat")`` returns the same
dictionary as ``POST /api/chat``.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from inference.backends.chat import ChatAnswer
from inference.chat_service import ChatService, ImageContext, chat_service
from inference.chat_text import Language, content_text
from inference.errors import DoctorAIError
from inference.kb_fetch import MEDQUAD_CITATION, MEDQUAD_LICENCE, CorpusInstaller
from inference.manager import ModelState
from inference.runtime import Runtime
from tabs.common import UiAuth, user_errors

log = logging.getLogger(__name__)

CHAT_CSS = """
#chat-bot .message-content, #chat-bot .message .prose, #chat-input textarea {unicode-bidi: plaintext; text-align: start}
#chat-bot [dir=rtl] {direction: rtl; text-align: right}
.doctorai-fetching {background:#eef6ee;border:1px solid #5a9e5a;border-radius:8px;padding:4px 12px}
.doctorai-chat-notice {background:#e8f1fb;border:1px solid #5b9bd5;border-radius:8px;padding:8px 12px;color:#123a5e}
"""

CHAT_NOTICE_HTML = (
    '<div class="doctorai-chat-notice" role="note" id="chat-notice"><b>Not medical advice.</b> '
    "Answers quote public consumer-health pages (MedQuAD, NIH) and may be incomplete or out of date; "
    "they cannot diagnose you. Ask a qualified clinician about your own health, and call your local "
    "emergency number in an emergency. "
    '<span dir="rtl" lang="ar">هذه ليست نصيحة طبية.</span></div>'
)

EXAMPLES = [
    "What are the symptoms of glaucoma?",
    "How is high blood pressure treated?",
    "Is cystic fibrosis inherited?",
    "ما هي أعراض مرض السكري؟",
    "كيف يمكن الوقاية من ارتفاع ضغط الدم؟",
]

_THINKING = "…"


def rtl(text: str, language: Language) -> str:
    """Arabic messages render right-to-left (Markdown inside still renders)."""
    if language != "ar":
        return text
    return f'<div dir="rtl" lang="ar">\n\n{text}\n\n</div>'


def render_answer(answer: ChatAnswer) -> str:
    """The answer as chat Markdown: text, then clickable sources (when not already in the text)."""
    parts = [answer.response]
    if answer.sources and not answer.sources_in_text:
        heading = "المصادر" if answer.language == "ar" else "Sources"
        lines = [
            f"{i}. [{html.escape(s.title)}]({s.url}) · relevance {s.score:.2f}" if s.url else f"{i}. {s.title}"
            for i, s in enumerate(answer.sources, 1)
        ]
        parts.append(f"**{heading}**\n" + "\n".join(lines))
    return rtl("\n\n".join(parts), answer.language)


def _plain_history(history: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Gradio's messages (content blocks) -> ``{role, content}`` text turns."""
    out = []
    for m in history or []:
        role = m.get("role")
        text = content_text(m.get("content")).strip()
        if role in ("user", "assistant") and text and text != _THINKING:
            out.append({"role": role, "content": text})
    return out


def fetch_panel(installer: CorpusInstaller | None) -> str | None:
    """The knowledge-base fetch as a panel while it runs or after it failed; None otherwise."""
    if installer is None:
        return None
    p = installer.progress
    if p.running:
        frac = p.fraction()
        bar = (
            f'<progress id="kb-progress" max="100" value="{frac * 100:.0f}" style="width:100%"></progress>'
            if frac is not None
            else '<progress id="kb-progress" style="width:100%"></progress>'
        )
        return (
            '<div class="doctorai-fetching" id="kb-fetch">\n\n### Fetching the knowledge base\n'
            f"{html.escape(p.line())}  \nThe chat answers as soon as this is done; a question asked now waits "
            f"for it.\n\n{bar}\n\n</div>"
        )
    if p.phase == "failed":
        return (
            f'<div class="doctorai-missing" id="kb-fetch">\n\n### Knowledge base not installed\n{p.message}\n\n</div>'
        )
    return None


def answer_stream(
    service: ChatService,
    message: str,
    history: list[dict[str, Any]] | None,
    image: ImageContext | None = None,
    installer: CorpusInstaller | None = None,
    max_wait_s: float = 3600.0,
) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
    """(textbox value, chat messages, status line) after each streamed piece. While the
    knowledge base is still being fetched, the answer waits for it and shows its progress."""
    shown: list[dict[str, Any]] = list(history or [])
    with user_errors():  # bad input: a toast, the typed text stays in the box
        text, language, turns = service.prepare(message, _plain_history(history))
    asked = f"{image.summary()}\n\n{text}" if image else text
    shown.append({"role": "user", "content": rtl(asked, language)})
    loading = service.state() is not ModelState.READY
    placeholder = "Loading the knowledge base (the first question builds it if needed)…" if loading else _THINKING
    shown.append({"role": "assistant", "content": placeholder})
    yield "", shown, ""
    deadline = time.monotonic() + max_wait_s
    while installer is not None and installer.progress.running and time.monotonic() < deadline:
        shown[-1] = {"role": "assistant", "content": f"Waiting for the knowledge base: {installer.progress.line()}…"}
        yield "", shown, ""
        installer.wait(1.0)
    answer: ChatAnswer | None = None
    acc = ""
    try:
        model = service.model()
        note = image.summary() if image else None
        for chunk in model.respond(text, language=language, history=turns, note=note, stream=True):
            if chunk.answer is not None:
                answer = chunk.answer
                break
            acc += chunk.delta
            shown[-1] = {"role": "assistant", "content": rtl(acc + " ▌", language)}
            yield "", shown, ""
    except DoctorAIError as exc:
        shown[-1] = {"role": "assistant", "content": f"**Cannot answer:** {exc.message}"}
        yield "", shown, ""
        return
    if answer is None:
        return
    body = render_answer(answer)
    if image:
        lead = (
            f"**About your image result:** {image.summary()} A research model's output is not a diagnosis.\n\n"
            if language == "en"
            else ""
        )
        body = lead + body
    shown[-1] = {"role": "assistant", "content": body}
    status = f"`{answer.model_version}` · {answer.mode} · {answer.timing_ms.get('total', 0):.0f} ms · {model.detail}"
    yield "", shown, status


def build_chat_tab(runtime: Runtime, ui: UiAuth, last_image: gr.State | None = None) -> None:
    """The chat tab. ``last_image`` is the shared state the image tabs write their result into.
    Every question is audited (SHA-256 of the text, not the text) and rate limited per user."""
    service = chat_service(runtime)
    concurrency = runtime.settings.chat_concurrency

    installer = runtime.kb_installer

    def install_panel() -> str:  # re-evaluated on every page load, and every second while fetching
        fetching = fetch_panel(installer)
        if fetching:
            return fetching
        help_text = service.install_help()
        if not help_text:
            return ""
        return f'<div class="doctorai-missing">\n\n### Knowledge base not installed\n{help_text}\n\n</div>'

    def refresh_panel() -> tuple[str, Any]:
        return install_panel(), gr.Timer(active=installer is not None and installer.progress.running)

    def audited(request: gr.Request | None, message: str) -> Any:
        return ui.audited(request, "chat", model_id="chat", data=str(message).encode("utf-8", "replace"))

    def respond(
        message: str, history: list[dict[str, Any]] | None, request: gr.Request
    ) -> Iterator[tuple[str, Any, str]]:
        with audited(request, message):
            yield from answer_stream(service, message, history, installer=installer)

    def respond_image(
        history: list[dict[str, Any]] | None, image: ImageContext | None, request: gr.Request
    ) -> Iterator[Any]:
        if image is None:
            raise gr.Error("Analyse an image in one of the image tabs first.")
        with audited(request, image.question()):
            yield from answer_stream(service, image.question(), history, image, installer=installer)

    def api_chat(
        message: str, history: list[dict[str, str]] | None = None, request: gr.Request | None = None
    ) -> dict[str, Any]:
        """Answer a health question; returns {response, sources, language, disclaimer, model_version, ...}."""
        with audited(request, message) as entry, user_errors():
            a = service.ask(message, history)
            entry.model_version = a.model_version
            entry.result = f"{a.mode}, {len(a.sources)} sources, {a.language}"
        return {
            "response": a.response,
            "sources": [{"title": s.title, "url": s.url, "score": s.score} for s in a.sources],
            "language": a.language,
            "disclaimer": a.disclaimer,
            "model_version": a.model_version,
            "mode": a.mode,
            "matched": a.matched,
        }

    with gr.Tab("Medical chat", id="chat", elem_id="tab-chat"):
        gr.HTML(CHAT_NOTICE_HTML)
        # A plain value plus a private timer rather than a callable value: Gradio would publish a
        # callable's page-load event in the API. The first tick (1 s after the page opens)
        # refreshes the panel, and the timer keeps ticking only while a fetch runs.
        panel = gr.Markdown(install_panel(), elem_id="chat-install")
        ticker = gr.Timer(1.0, active=True)
        ticker.tick(refresh_panel, outputs=[panel, ticker], api_visibility="private", queue=False)
        chatbot = gr.Chatbot(
            label="DoctorAI chat",
            elem_id="chat-bot",
            height=480,
            buttons=["copy"],
            feedback_options=None,
            placeholder="Ask a consumer-health question in English (Arabic: see the note on languages below).",
        )
        with gr.Row():
            box = gr.Textbox(
                show_label=False,
                placeholder="Ask a health question… / اكتب سؤالك الصحي…",
                elem_id="chat-input",
                scale=5,
                max_lines=6,
                autofocus=False,
            )
            send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        with gr.Row():
            ask_image = gr.Button(
                "Ask about my image result", visible=False, elem_id="chat-ask-image", variant="secondary"
            )
            clear = gr.Button("Clear conversation", elem_id="chat-clear")
        status = gr.Markdown(elem_id="chat-status")
        gr.Examples(examples=[[q] for q in EXAMPLES], inputs=[box], label="Example questions / أسئلة مثال")
        gr.Markdown(
            f"Knowledge base: {MEDQUAD_CITATION}. Licence {MEDQUAD_LICENCE}; each answer links its source page.",
            elem_id="chat-attribution",
        )
        with gr.Accordion("About this chat", open=False):
            gr.Markdown(
                "Answers come from a hybrid search (BM25 + MiniLM embeddings) over MedQuAD, 16k question-answer "
                "pairs from NIH consumer-health sites (CC BY 4.0). Without a generator the reply quotes the "
                "best-matching passages with their source links; when nothing matches well enough it says so. "
                "With a T5-family generator configured (`options.generator` in the chat spec, or "
                "`DOCTORAI_CHAT_GENERATOR=/path/to/t5-folder`), it writes an answer from those passages and "
                "still lists them. Arabic questions need an Arabic corpus or an Arabic-capable generator "
                "(e.g. AraT5); otherwise the chat says so."
            )

        outputs = [box, chatbot, status]
        for trigger in (box.submit, send.click):
            trigger(
                respond,
                inputs=[box, chatbot],
                outputs=outputs,
                api_visibility="private",
                concurrency_limit=concurrency,
                concurrency_id="doctorai-chat",
            )
        clear.click(lambda: ("", [], ""), outputs=outputs, api_visibility="private")
        if last_image is not None:

            def show_button(image: ImageContext | None) -> Any:
                if image is None:
                    return gr.update(visible=False)
                return gr.update(visible=True, value=f"Ask about my image result: {image.label_name}")

            last_image.change(show_button, inputs=last_image, outputs=ask_image, api_visibility="private")
            ask_image.click(
                respond_image,
                inputs=[chatbot, last_image],
                outputs=outputs,
                api_visibility="private",
                concurrency_limit=concurrency,
                concurrency_id="doctorai-chat",
            )
        gr.api(api_chat, api_name="chat", concurrency_limit=concurrency, concurrency_id="doctorai-chat")
