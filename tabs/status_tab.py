"""A status tab: which models are installed and loaded, cache figures."""

from __future__ import annotations

from typing import Any

import gradio as gr

from inference.runtime import Runtime


def status_markdown(runtime: Runtime) -> str:
    rows = ["| model | state | version | detail |", "|---|---|---|---|"]
    for model_id, st in runtime.manager.status().items():
        detail = (
            st.get("detail") or st.get("error") or (f"loaded in {st['load_seconds']} s" if "load_seconds" in st else "")
        )
        rows.append(f"| `{model_id}` | {st['state']} | {st['version']} | {detail} |")
    waiting = [m for m in runtime.preload_ids if runtime.manager.state(m).value in ("loading", "not_loaded")]
    rows.append("")
    if runtime.preload_ids:
        done = len(runtime.preload_ids) - len(waiting)
        rows.append(f"Preloading the installed models: {done} of {len(runtime.preload_ids)} ready.")
    if runtime.kb_installer is not None:
        line = runtime.kb_installer.progress.line()
        if line:
            rows.append(f"Chat knowledge base: {line}")
    c = runtime.cache.stats()
    rows.append("")
    rows.append(f"Prediction cache: {'on' if c['enabled'] else 'off'}, {c['hits']} hits, {c['misses']} misses.")
    return "\n".join(rows)


def busy(runtime: Runtime) -> bool:
    """A preload or the knowledge-base fetch is still running."""
    loading = any(runtime.manager.state(m).value in ("loading", "not_loaded") for m in runtime.preload_ids)
    return loading or (runtime.kb_installer is not None and runtime.kb_installer.progress.running)


def build_status_tab(runtime: Runtime) -> None:
    """Model states, preload and fetch progress (refreshed every 2 s while either runs), cache figures."""

    def refresh() -> tuple[str, Any]:
        return status_markdown(runtime), gr.Timer(active=busy(runtime))

    with gr.Tab("Status", id="status"):
        md = gr.Markdown(status_markdown(runtime), elem_id="status-table")
        ticker = gr.Timer(2.0, active=True)  # first tick refreshes the page's copy; then only while busy
        ticker.tick(refresh, outputs=[md, ticker], api_visibility="private", queue=False)
        gr.Button("Refresh").click(lambda: status_markdown(runtime), outputs=md, api_visibility="private")
