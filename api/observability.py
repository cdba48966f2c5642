"""Prometheus metrics: ``GET /metrics`` and the middleware and observers that feed it.

Request metrics are labelled by route *template* (``/api/predict/{model_id}``), never by raw
path, so label cardinality stays bounded. Inference metrics come from the analyzer's
observer hook, so the REST API and the Gradio UI are counted alike. With several uvicorn
workers set ``PROMETHEUS_MULTIPROC_DIR`` and the registry aggregates every worker's files.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from collections.abc import Iterator

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.runtime import Runtime
from inference.service import AnalysisResult

log = logging.getLogger(__name__)
_CONVERTER = re.compile(r":\w+}")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Stages reported by the analyzer (ms) -> one histogram series per model and stage.
STAGES = ("decode", "preprocess", "forward", "postprocess", "queue_wait", "model_load", "total")


class Metrics:
    """The application's metric objects, in their own registry (one per app instance)."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        # With several workers each metric writes to files in PROMETHEUS_MULTIPROC_DIR and the scrape
        # registry reads them all (MultiProcessCollector); registering the metric objects there as
        # well would report this worker's share twice. So they go to a registry nobody scrapes.
        r = CollectorRegistry() if multiprocess else self.registry
        self.requests = Counter(
            "doctorai_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "doctorai_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "doctorai_http_requests_in_flight", "requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.inference_seconds = Histogram(
            "doctorai_inference_stage_seconds",
            "analysis latency per model and stage",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.analyses = Counter(
            "doctorai_analyses_total", "finished analyses", ["model", "version", "cached"], registry=r
        )
        self.cache_events = Counter("doctorai_cache_events_total", "prediction cache lookups", ["result"], registry=r)
        self.registry.register(_RuntimeCollector(runtime))  # this worker's models, cache, RSS
        if multiprocess:
            MultiProcessCollector(self.registry)

    def observe(self, result: AnalysisResult) -> None:
        model = result.model_id
        for stage in STAGES:
            ms = result.timing_ms.get(stage)
            if ms is not None:
                self.inference_seconds.labels(model, stage).observe(ms / 1e3)
        self.analyses.labels(model, result.spec.version, str(result.cached).lower()).inc()
        self.cache_events.labels("hit" if result.cached else "miss").inc()


class _RuntimeCollector(Collector):
    """Read at scrape time: model states, load seconds, cache size, process RSS."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        status = self.runtime.manager.status()
        loaded = GaugeMetricFamily("doctorai_model_loaded", "1 when the model is loaded", labels=["model", "version"])
        load_s = GaugeMetricFamily("doctorai_model_load_seconds", "time the last load took", labels=["model"])
        for model_id, st in status.items():
            loaded.add_metric([model_id, st["version"]], 1.0 if st["state"] == "ready" else 0.0)
            if "load_seconds" in st:
                load_s.add_metric([model_id], float(st["load_seconds"]))
        yield loaded
        yield load_s
        cache = self.runtime.cache.stats()
        yield GaugeMetricFamily(
            "doctorai_cache_entries", "entries in the prediction cache (disk backend)", value=cache.get("entries", 0)
        )
        up = GaugeMetricFamily(
            "doctorai_cache_backend_up", "1 while the cache backend answers, 0 while it is bypassed", labels=["backend"]
        )
        up.add_metric([cache["backend"]], 1.0 if cache["healthy"] else 0.0)
        yield up
        errors = CounterMetricFamily(
            "doctorai_cache_backend_errors",
            "failed cache reads/writes (the request went on without the cache)",
            labels=["backend"],
        )
        errors.add_metric([cache["backend"]], float(cache["errors"]))
        yield errors
        rss = GaugeMetricFamily("doctorai_process_resident_memory_bytes", "resident memory of this process")
        rss.add_metric([], float(_rss_bytes()))
        yield rss
        gpu = _gpu_memory()
        if gpu:
            g = GaugeMetricFamily(
                "doctorai_gpu_memory_bytes", "GPU memory in use by this process", labels=["device", "framework"]
            )
            for (device, framework), used in gpu.items():
                g.add_metric([device, framework], float(used))
            yield g


def _gpu_memory() -> dict[tuple[str, str], int]:
    """GPU memory in use, per device and framework, for frameworks this process has loaded
    already (a scrape must never be what imports TensorFlow or torch)."""
    import sys

    out: dict[tuple[str, str], int] = {}
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            for i, _ in enumerate(tf.config.list_logical_devices("GPU")):
                out[(f"GPU:{i}", "tensorflow")] = int(tf.config.experimental.get_memory_info(f"GPU:{i}")["current"])
        except Exception:  # no GPU runtime, or TF not initialised yet
            log.debug("no TensorFlow GPU memory figures", exc_info=True)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                for i in range(torch.cuda.device_count()):
                    out[(f"cuda:{i}", "torch")] = int(torch.cuda.memory_allocated(i))
        except Exception:
            log.debug("no torch GPU memory figures", exc_info=True)
    return out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class MetricsMiddleware:
    """Pure ASGI request metrics: in-flight gauge, count and latency by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.in_flight.dec()
            route = scope.get("route")  # set on this scope by the router that matched
            path = scope.get("path", "")
            template = getattr(route, "path", None) or ("/gradio" if path != "/" else "/")
            template = _CONVERTER.sub("}", template)  # "/api/predict/{model_id:path}" -> "{model_id}"
            metrics.requests.labels(scope.get("method", ""), template, str(status)).inc()
            metrics.request_seconds.labels(scope.get("method", ""), template).observe(time.perf_counter() - start)


def install_metrics(app: FastAPI, runtime: Runtime) -> Metrics:
    """Attach the request middleware, the analyzer observer and ``GET /metrics``."""
    metrics = Metrics(runtime)
    runtime.analyzer.add_observer(metrics.observe)
    settings = runtime.settings

    app.add_middleware(MetricsMiddleware, metrics=metrics)

    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def scrape(request: Request) -> Response:
        # The auth gate lets through callers with the scrape token (Prometheus) and users; of
        # users, only admins may read metrics.
        token = settings.metrics_token
        sent = request.headers.get("authorization", "")
        if not (token and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())):
            principal = request.scope.get("state", {}).get("principal")
            if principal is None:
                raise HTTPException(401, "send the scrape token as 'Authorization: Bearer <token>'")
            if getattr(principal, "role", None) != "admin":
                raise HTTPException(403, "metrics are for admins and for Prometheus (DOCTORAI_METRICS_TOKEN)")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    return metrics
