"""The Gradio UI, generated from the model registry."""

from __future__ import annotations

import gradio as gr

from inference.runtime import Runtime
from tabs.chat_tab import CHAT_CSS

CSS = (
    """
.doctorai-notice {background:#fff4e5;border:1px solid #f0a030;border-radius:8px;padding:8px 12px;color:#5a3300}
.doctorai-missing {background:#fdecea;border:1px solid #e57373;border-radius:8px;padding:4px 12px}
"""
    + CHAT_CSS
)


def build_ui(runtime: Runtime) -> gr.Blocks:
    """One tab per image model in registry order, plus a status tab."""
    from tabs.chat_tab import build_chat_tab
    from tabs.image_tab import build_image_tab
    from tabs.status_tab import build_status_tab

    with gr.Blocks(title="DoctorAI") as demo:
        gr.Markdown(
            "# DoctorAI\nClinical imaging workbench: upload an image, get class probabilities and a Grad-CAM heatmap."
        )
        last_image = gr.State(None)  # the session's latest image result, for the chat tab
        with gr.Tabs():
            for spec in runtime.registry.image_models():
                build_image_tab(runtime, spec, last_image)
            if any(s.backend == "chat" for s in runtime.registry):
                build_chat_tab(runtime, last_image)
            build_status_tab(runtime)
    return demo
