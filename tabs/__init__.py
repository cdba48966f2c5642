"""The Gradio UI, generated from the model registry."""

from __future__ import annotations

import html
import logging
from typing import Any

import gradio as gr

from auth.web import AuthContext
from inference.runtime import Runtime
from tabs.chat_tab import CHAT_CSS
from tabs.common import UiAuth

CSS = (
    """
.doctorai-notice {background:#fff4e5;border:1px solid #f0a030;border-radius:8px;padding:8px 12px;color:#5a3300}
.doctorai-missing {background:#fdecea;border:1px solid #e57373;border-radius:8px;padding:4px 12px}
#user-bar {text-align:right}
#user-bar .who {color:#4b5563;font-size:.9rem}
"""
    + CHAT_CSS
)


def user_bar_html(username: str, role: str) -> str:
    return (
        f'<span class="who">Signed in as <b id="user-name">{html.escape(username)}</b> ({html.escape(role)})</span>'
        ' · <a href="/logout" id="logout-link">Log out</a>'
    )


def build_ui(runtime: Runtime, auth: AuthContext) -> gr.Blocks:
    """One tab per image model in registry order, the chat, a status tab and (admins) the audit."""
    from tabs.admin_tab import build_admin_tab
    from tabs.chat_tab import build_chat_tab
    from tabs.image_tab import build_image_tab
    from tabs.status_tab import build_status_tab

    ui = UiAuth(auth)
    # Gradio deletes its cached upload/output files older than 15 min every 5 min; the image tabs
    # delete their uploads right after reading them.
    with gr.Blocks(title="DoctorAI", delete_cache=(300, 900)) as demo:
        with gr.Row():
            gr.Markdown(
                "# DoctorAI\nClinical imaging workbench: upload an image, get class probabilities and a "
                "Grad-CAM heatmap or, for the anaemia screens, a feature-contributions chart."
            )
            user_bar = gr.HTML(elem_id="user-bar")
        last_image = gr.State(None)  # the session's latest image result, for the chat tab
        with gr.Tabs():
            for spec in runtime.registry.image_models():
                build_image_tab(runtime, spec, ui, last_image)
            if any(s.backend == "chat" for s in runtime.registry):
                build_chat_tab(runtime, ui, last_image)
            build_status_tab(runtime)
            admin_tab = build_admin_tab(runtime, ui)

        def on_load(request: gr.Request) -> tuple[str, Any]:
            try:
                user = ui.user(request)
            except Exception:
                return "", gr.update(visible=False)
            return user_bar_html(user.username, user.role), gr.update(visible=user.role == "admin")

        demo.load(on_load, outputs=[user_bar, admin_tab], api_visibility="private")
    return demo


def calm_gradio_queue(blocks: gr.Blocks, poll_ms: float) -> None:
    """Make Gradio's queue poll every ``poll_ms`` when idle (progress updates every 10x that)
    instead of every 1 ms (10 ms), which cost the REST and UI paths alike on a 2-core server
    (``bench/bench_load.py``). Gradio has no public setting for it; if its internals change,
    this logs and leaves the queue as it is."""
    queue = getattr(blocks, "_queue", None)
    if queue is None or not hasattr(queue, "sleep_when_free"):
        logging.getLogger(__name__).warning("Gradio's queue has no sleep_when_free; left at its default polling")
        return
    queue.sleep_when_free = poll_ms / 1e3
    if hasattr(queue, "progress_update_sleep_when_free"):
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, poll_ms * 10 / 1e3)
