"""A status tab: which models are installed and loaded, cache figures."""

from __future__ import annotations

import gradio as gr

from inference.runtime import Runtime


def status_markdown(runtime: Runtime) -> str:
    rows = ["| model | state | version | detail |", "|---|---|---|---|"]
    for model_id, st in runtime.manager.status().items():
        detail = (
            st.get("detail") or st.get("error") or (f"loaded in {st['load_seconds']} s" if "load_seconds" in st else "")
        )
        rows.append(f"| `{model_id}` | {st['state']} | {st['version']} | {detail} |")
    c = runtime.cache.stats()
    rows.append("")
    rows.append(f"Prediction cache: {'on' if c['enabled'] else 'off'}, {c['hits']} hits, {c['misses']} misses.")
    return "\n".join(rows)


def build_status_tab(runtime: Runtime) -> None:
    with gr.Tab("Status", id="status"):
        md = gr.Markdown(status_markdown(runtime))
        gr.Button("Refresh").click(lambda: status_markdown(runtime), outputs=md, api_name="status")
