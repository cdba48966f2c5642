"""One tab per image model, generated from its spec."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from auth.audit import result_summary
from inference.errors import DoctorAIError
from inference.overlay import display_image
from inference.registry import ModelSpec
from inference.runtime import Runtime
from inference.service import AnalysisResult
from tabs.common import NOTICE_HTML, UiAuth, guarded, model_card_markdown

UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"]


def estimate_markdown(result: AnalysisResult) -> str:
    """The estimate beside the class (conjunctiva model): value, interval, and whether it agrees."""
    extra = result.prediction.extra
    lines: list[str] = []
    est = extra.get("estimate")
    if est:
        low, high = est["interval"]
        lines.append(
            f"**Estimated {est['name']}:** {est['value']:.1f} {est['unit']} "
            f"({est.get('level', 0.9):.0%} interval {low:.1f}-{high:.1f} {est['unit']}); "
            "a screening estimate, not a measurement.  "
        )
        note = extra.get("agreement_note")
        if note:
            mark = "**Disagreement:** " if extra.get("agreement") == "disagree" else ""
            lines.append(f"{mark}{note}  ")
    if extra.get("input_note"):
        lines.append(f"**Note:** {extra['input_note']}  ")
    return "\n".join(lines)


def _summary(result: AnalysisResult) -> str:
    p = result.probabilities[result.label]
    estimate = estimate_markdown(result)
    total = result.timing_ms.get("total", 0.0)
    cache = "hit (model not run)" if result.cached else "computed"
    load = result.timing_ms.get("model_load")
    loaded = f" (incl. {load / 1000:.1f} s loading the model on first use)" if load else ""
    return (
        f"**Prediction:** {result.label_name} ({p:.1%})  \n"
        + (f"{estimate}\n" if estimate else "")
        + f"**Time:** {total:.0f} ms{loaded} · **Cache:** {cache} · "
        f"**Model:** `{result.model_id}` v{result.spec.version}  \n"
        f"**Input:** {result.image.format if result.image else '?'} · sha256 `{result.sha256[:12]}…`  \n"
        + (f"**Experimental model:** {result.spec.below_floor}.  \n" if result.spec.below_floor else "")
        + "_Research use only, not a diagnosis._"
    )


def read_upload(path: str, kept: tuple[str, bytes] | None) -> tuple[str, bytes]:
    """The uploaded bytes. The temporary file is deleted once read (uploads are clinical data);
    the bytes stay in the session's state so "Analyze" can be clicked again."""
    file = Path(path)
    if file.is_file():
        data = file.read_bytes()
        file.unlink(missing_ok=True)
        return path, data
    if kept is not None and kept[0] == path:
        return kept
    raise gr.Error("The uploaded file is gone (uploads are deleted after analysis); upload it again.")


PREVIEW_MAX_SIDE = 768
FULL_RESOLUTION = 1 << 30  # display_image never upscales: this keeps the decoded size


def preview_note(img: Any) -> str:
    """One line under the preview: format, size and, for DICOM, the window it was rendered with."""
    h, w = img.pixels.shape[:2]
    parts = [f"{img.format}", f"{w} x {h} px"]
    window = img.meta.get("window")
    if window:
        parts.append(f"window {window}")
    return "Preview: " + ", ".join(parts) + " (as decoded for the model)."


def write_pngs(result: AnalysisResult, opacity: float, colormap: str) -> list[str] | None:
    """The decoded input and its overlay as full-resolution PNGs in Gradio's cache folder (which
    ``delete_cache`` empties after 15 minutes), or None without an explanation."""
    original = result.display_pixels(FULL_RESOLUTION)
    overlay = result.explanation_image(opacity, colormap, FULL_RESOLUTION)
    if original is None or overlay is None:
        return None
    folder = Path(gr.utils.get_upload_folder()) / f"doctorai-{uuid.uuid4().hex}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in ((f"{result.model_id}-original.png", original), (f"{result.model_id}-overlay.png", overlay)):
        path = folder / name
        Image.fromarray(pixels).save(path, format="PNG")
        paths.append(str(path))
    return paths


def build_image_tab(runtime: Runtime, spec: ModelSpec, ui: UiAuth, last_result: gr.State | None = None) -> None:
    """One image model's tab; ``last_result`` (optional, shared by all tabs) receives each
    analysis as an ``ImageContext`` so the chat tab can ask about it."""
    settings = runtime.settings
    names = spec.class_names
    # XGBoost models explain with a feature-contributions chart, the others with Grad-CAM
    by_features = spec.explains_by_features
    heatmaps = not by_features  # Grad-CAM models: original | overlay slider, PNG downloads

    def analyze(
        path: str | None,
        opacity: float,
        show_heatmap: bool,
        kept: tuple[str, bytes] | None,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        if not path:
            raise gr.Error("Upload an image first (PNG, JPEG, BMP, TIFF, WebP or DICOM).")
        path, data = read_upload(path, kept)
        with ui.audited(request, "predict", model_id=spec.id, model_version=spec.version, data=data) as entry:
            result = runtime.analyzer.analyze(spec.id, data, filename=Path(path).name, explain=True)
            entry.result = result_summary(result.label, result.probabilities, result.cached)
        label = {names[c]: p for c, p in result.probabilities.items()}
        view = _render(result, opacity, show_heatmap)
        return label, view, _summary(result), result, (path, data)

    def rerender(result: AnalysisResult | None, opacity: float, show_heatmap: bool) -> np.ndarray | None:
        return None if result is None else _render(result, opacity, show_heatmap)

    def preview(path: str | None, kept: tuple[str, bytes] | None) -> tuple[Any, str, Any]:
        """The decoded upload (DICOM rendered with its window) as soon as a file is chosen. The
        bytes move into the session state, as after an analysis, and the temporary file goes."""
        if not path:
            return None, "", None
        try:
            path, data = read_upload(path, kept)
        except gr.Error:  # already analysed and deleted by a quick click on Analyze
            return gr.update(), "", kept
        try:
            img = runtime.analyzer.decode(data, Path(path).name)
        except DoctorAIError as exc:
            return None, f"**Cannot read this file:** {exc.message}", (path, data)
        return display_image(img.pixels, PREVIEW_MAX_SIDE), preview_note(img), (path, data)

    def compare(result: AnalysisResult | None, opacity: float) -> tuple[Any, Any]:
        """Original and overlay for the slider, and both as full-resolution PNG downloads."""
        if result is None:
            return None, None
        overlay = result.explanation_image(opacity, settings.heatmap_colormap)
        if overlay is None:
            return None, None
        return (result.display_pixels(), overlay), write_pngs(result, opacity, settings.heatmap_colormap)

    def _render(result: AnalysisResult, opacity: float, show_heatmap: bool) -> np.ndarray | None:
        if show_heatmap:
            img = result.explanation_image(opacity, settings.heatmap_colormap)
            if img is not None:
                return img
        return result.display_pixels()

    with gr.Tab(spec.display_name, id=spec.id, elem_id=f"tab-{spec.id}"):
        gr.HTML(NOTICE_HTML)
        disabled = runtime.manager.disabled_message(spec.id)
        if disabled:
            gr.Markdown(f"### Experimental model, not enabled\n{disabled}.", elem_classes=["doctorai-experimental"])
        elif spec.below_floor:
            gr.Markdown(
                f"### Experimental model\nServed because experimental models are enabled, but "
                f"{spec.below_floor}. Do not rely on its output.",
                elem_classes=["doctorai-experimental"],
            )
        missing = runtime.manager.missing_weights_message(spec.id)
        if missing:
            gr.Markdown(
                f"### Model not installed\n{missing}.  \n"
                "Train one with `python -m inference.train "
                f"{spec.id} --data DIR` or copy a trained file there, then reload this page.",
                elem_classes=["doctorai-missing"],
            )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Image: PNG, JPEG, BMP, TIFF, WebP or DICOM (.dcm)",
                    file_types=UPLOAD_TYPES,
                    type="filepath",
                    elem_id=f"upload-{spec.id}",
                )
                shown = gr.Image(
                    label="Preview of the chosen file",
                    type="numpy",
                    format="png",
                    interactive=False,
                    height=280,
                    buttons=[],
                    elem_id=f"preview-{spec.id}",
                )
                shown_note = gr.Markdown(elem_id=f"preview-note-{spec.id}")
                button = gr.Button("Analyze", variant="primary", elem_id=f"analyze-{spec.id}")
                # kept (hidden) for the feature-chart tabs so every tab's API takes the same inputs
                opacity = gr.Slider(
                    0.0,
                    1.0,
                    value=settings.heatmap_opacity,
                    step=0.05,
                    label="Heatmap opacity",
                    visible=not by_features,
                )
                show = gr.Checkbox(
                    value=True,
                    label="Show the feature-contributions chart (untick for the plain image)"
                    if by_features
                    else "Show Grad-CAM heatmap (untick for the plain image)",
                )
            with gr.Column(scale=1):
                label = gr.Label(
                    num_top_classes=len(spec.classes), label="Class probabilities", elem_id=f"label-{spec.id}"
                )
                if by_features:  # the class and the estimate side by side, above the chart
                    info = gr.Markdown(label="Summary", elem_id=f"info-{spec.id}")
                view = gr.Image(
                    label="Feature contributions to the prediction" if by_features else "Grad-CAM overlay",
                    type="numpy",
                    format="png",
                    interactive=False,
                    elem_id=f"heatmap-{spec.id}",
                )
                if heatmaps:
                    info = gr.Markdown(label="Summary", elem_id=f"info-{spec.id}")
                    slider = gr.ImageSlider(
                        label="Original | Grad-CAM overlay (drag the handle to compare)",
                        type="numpy",
                        format="png",
                        interactive=False,
                        elem_id=f"compare-{spec.id}",
                    )
                    downloads = gr.File(
                        label="Full-resolution PNGs: original and overlay",
                        file_count="multiple",
                        interactive=False,
                        elem_id=f"downloads-{spec.id}",
                    )
        with gr.Accordion("Model card", open=False):
            gr.Markdown(model_card_markdown(spec))
        state = gr.State(None)
        kept = gr.State(None)  # (upload path, bytes) of the last analysed upload
        analysed = button.click(
            guarded(analyze),
            inputs=[upload, opacity, show, kept],
            outputs=[label, view, info, state, kept],
            api_name=f"predict_{spec.id}",
            concurrency_limit=None,
        )
        # UI-only events are private: not in view_api() and not callable by name.
        upload.change(preview, inputs=[upload, kept], outputs=[shown, shown_note, kept], api_visibility="private")
        if heatmaps:
            analysed.success(compare, inputs=[state, opacity], outputs=[slider, downloads], api_visibility="private")
            opacity.release(compare, inputs=[state, opacity], outputs=[slider, downloads], api_visibility="private")
        if last_result is not None:  # the chat tab's "ask about my image result" (tabs/chat_tab.py)
            from inference.chat_service import ImageContext

            analysed.success(ImageContext.from_result, inputs=state, outputs=last_result, api_visibility="private")
        for control in (opacity, show):
            control.change(rerender, inputs=[state, opacity, show], outputs=view, api_visibility="private")
