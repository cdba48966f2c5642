"""The REST API: health, readiness and prediction. Domain errors become HTTP errors here."""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.logs import current_request_id
from auth.audit import AuditEntry, result_summary
from auth.web import Analyst, AuthContext, client_ip, current_principal
from inference.errors import DoctorAIError, ImageTooLarge, InvalidInput
from inference.runtime import Runtime
from inference.service import RESEARCH_NOTICE

log = logging.getLogger(__name__)

APP_VERSION = "0.1.0"


class PredictResponse(BaseModel):
    model_id: str
    model_version: str
    label: str
    label_name: str
    probabilities: dict[str, float]
    heatmap_png_base64: str | None
    timing_ms: float
    timing_breakdown_ms: dict[str, float]
    cached: bool
    sha256: str
    # why the model is experimental (its own evidence misses its floor); only ever set where
    # DOCTORAI_EXPERIMENTAL_MODELS lets such a model answer at all (otherwise: 403 with the reason)
    experimental: str | None = None
    notice: str = RESEARCH_NOTICE
    # models with a numeric estimate beside the class (conjunctiva: haemoglobin):
    # {name, value, unit, interval: [low, high], level}; None for the others
    estimate: dict[str, Any] | None = None
    # how the class and the estimate compare: "agree", "borderline" or "disagree" (None without one)
    agreement: str | None = None
    # what the user should know about this input or result (e.g. no alpha mask), readable sentences
    notes: list[str] = Field(default_factory=list)


class _DependencyChecks:
    """Database and cache reachability, re-checked at most every ``ttl_s`` so that probes and
    load balancers polling /api/health cannot hammer a struggling database."""

    def __init__(self, auth: AuthContext, runtime: Runtime, ttl_s: float = 2.0) -> None:
        self.auth, self.runtime, self.ttl_s = auth, runtime, ttl_s
        self._at = 0.0
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()

    def run(self) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._at < self.ttl_s and self._last:
                return self._last
            self._last = {
                "database": "ok" if self.auth.db.ping() else "down",
                "cache": "ok" if self.runtime.cache.ping() else "down",
            }
            self._at = time.monotonic()
            return self._last


def install_error_handlers(app: FastAPI) -> None:
    """Typed domain errors -> their HTTP status with the user-facing message; anything
    unexpected -> a plain 500 without a stack trace (the trace goes to the log)."""

    @app.exception_handler(DoctorAIError)
    async def _domain(request: Request, exc: DoctorAIError) -> JSONResponse:
        log.info(
            "rejected %s %s: %s", request.method, request.url.path, exc.message, extra={"error": type(exc).__name__}
        )
        body = {"detail": exc.message, "error": type(exc).__name__, "request_id": current_request_id()}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a list of pydantic errors; users get one sentence per problem,
        # in the same shape as every other error.
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        detail = "invalid request: " + "; ".join(problems) + " (see /docs for the expected fields)"
        body = {"detail": detail, "error": "InvalidRequest", "request_id": _request_id(request)}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error", "request_id": _request_id(request)}, status_code=500)


def _request_id(request: Request) -> str | None:
    # A 500 is answered outside the request-id middleware (whose context has ended by then), so
    # the id is also kept on the request state.
    return current_request_id() or getattr(request.state, "request_id", None)


def build_router(runtime: Runtime, auth: AuthContext) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["api"])
    settings = runtime.settings

    checks = _DependencyChecks(auth, runtime)

    @router.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the process answers (always 200; never touches a model). ``status`` is
        ``degraded`` while the account database or the cache backend does not answer."""
        deps = checks.run()
        status = "ok" if all(v == "ok" for v in deps.values()) else "degraded"
        return {"status": status, "version": APP_VERSION, "dependencies": deps}

    @router.get("/ready")
    def ready() -> JSONResponse:  # callers: any user, or probes with DOCTORAI_METRICS_TOKEN
        """Readiness: per-model state; 503 while a preloaded model is still loading."""
        models = runtime.manager.status()
        waiting = [m for m in runtime.preload_ids if models.get(m, {}).get("state") in ("loading", "not_loaded")]
        body: dict[str, Any] = {
            "status": "loading" if waiting else "ready",
            "version": APP_VERSION,
            "models": models,
            "preload": {"models": runtime.preload_ids, "waiting": waiting},
            "cache": runtime.cache.stats(),
        }
        if runtime.kb_installer is not None:  # the chat corpus fetch; the image models do not wait for it
            body["knowledge_base"] = runtime.kb_installer.progress.snapshot()
        return JSONResponse(body, status_code=503 if waiting else 200)

    @router.get("/models", dependencies=[Depends(current_principal)])
    def models() -> list[dict[str, Any]]:
        """The registry as clients need it: ids, classes, heads, versions, states."""
        status = runtime.manager.status()
        return [
            {
                "id": s.id,
                "display_name": s.display_name,
                "modality": s.modality,
                "head": s.head.value,
                "classes": [c.model_dump() for c in s.classes],
                "version": s.version,
                "state": status[s.id]["state"],
                "experimental": s.below_floor,
            }
            for s in runtime.registry
        ]

    # ``:path`` so that an id with (encoded) slashes, e.g. ``..%2F..%2Fetc``, reaches the route: it gets
    # the 404 that lists the known ids and an audit row, instead of a bare "Not Found".
    @router.post("/predict/{model_id:path}", response_model=PredictResponse)
    def predict(
        request: Request,
        model_id: str,
        principal: Analyst,
        file: Annotated[UploadFile | None, File(description="PNG, JPEG, BMP, TIFF, WebP or DICOM")] = None,
        explain: Annotated[bool, Query()] = False,
        explain_form: Annotated[bool | None, Form(alias="explain")] = None,
        opacity: Annotated[float, Query(ge=0.0, le=1.0)] = settings.heatmap_opacity,
    ) -> PredictResponse:
        """Classify one image; ``explain=true`` adds a Grad-CAM overlay as base64 PNG. Every call
        (also a rejected one) is written to the audit log with the input's SHA-256."""
        entry = AuditEntry(
            action="predict",
            username=principal.username,
            role=principal.role,
            model_id=model_id[:64],
            client_ip=client_ip(request),
            request_id=current_request_id(),
        )
        data = b""
        audited: bytes | None = None  # what the audit hashes (and keeps, with DOCTORAI_AUDIT_KEEP_INPUTS)
        if file is not None:
            # Read at most limit+1 bytes: a lying or missing Content-Length cannot make us hold more.
            data = audited = file.file.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                # Refused below; the audit still gets the SHA-256 of the whole upload, not of its first
                # limit+1 bytes. The rest (within the body limit's multipart allowance) is already
                # spooled and is hashed a chunk at a time; a refused upload is never kept.
                digest = hashlib.sha256(data)
                while chunk := file.file.read(1 << 20):
                    digest.update(chunk)
                entry.input_sha256, audited = digest.hexdigest(), None
        with auth.audit.track(entry, audited):
            auth.service.check_analysis_rate(principal.username)
            spec = runtime.registry[model_id]
            entry.model_version = spec.version
            if not spec.is_image_model:
                image_ids = [s.id for s in runtime.registry.image_models()]
                raise InvalidInput(f"{model_id} is not an image model; image models: {image_ids}")
            if file is None:
                raise InvalidInput("send the image as a multipart form field named 'file'")
            if len(data) > settings.max_upload_bytes:
                raise ImageTooLarge(f"the upload is larger than the {settings.max_upload_mb:.0f} MB limit")
            want_cam = explain or bool(explain_form)
            analyzer = runtime.analyzer
            result = analyzer.analyze(model_id, data, filename=file.filename, explain=want_cam, need_pixels=False)
            entry.result = result_summary(result.label, result.probabilities, result.cached)
            heatmap = None
            if want_cam:
                png = analyzer.heatmap_png(
                    result, data, filename=file.filename, opacity=opacity, colormap=settings.heatmap_colormap
                )
                heatmap = None if png is None else base64.b64encode(png).decode("ascii")
        return PredictResponse(
            model_id=spec.id,
            model_version=spec.version,
            label=result.label,
            label_name=result.label_name,
            probabilities=result.probabilities,
            heatmap_png_base64=heatmap,
            timing_ms=round(result.timing_ms.get("total", 0.0), 3),
            timing_breakdown_ms={k: round(v, 3) for k, v in result.timing_ms.items()},
            cached=result.cached,
            sha256=result.sha256,
            experimental=spec.below_floor,
            estimate=result.prediction.extra.get("estimate"),
            agreement=result.prediction.extra.get("agreement"),
            notes=[
                str(n)
                for n in (result.prediction.extra.get("agreement_note"), result.prediction.extra.get("input_note"))
                if n
            ],
        )

    return router
