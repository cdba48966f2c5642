"""Builds the process-wide inference objects from settings (no web imports here)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inference.cache import PredictionCache
from inference.manager import ModelManager
from inference.registry import Registry
from inference.service import Analyzer
from settings import Settings

if TYPE_CHECKING:
    from inference.kb_fetch import CorpusInstaller

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything the edges (tabs, REST API) share: one of each per process."""

    settings: Settings
    registry: Registry
    manager: ModelManager
    cache: PredictionCache
    analyzer: Analyzer
    preload_ids: list[str] = field(default_factory=list)  # what start_background loads
    kb_installer: CorpusInstaller | None = None  # fetches MedQuAD when the chat has no index

    def start_background(self, delay_s: float = 1.0) -> threading.Thread:
        """Warm the rendering path and preload ``preload_ids`` in a daemon thread; start the
        knowledge-base fetch (its own daemon thread) when one is needed.

        It starts ``delay_s`` after the server begins listening: importing TensorFlow holds
        the GIL for seconds and would otherwise delay the first ``/api/health`` answer.
        Preloaded models report ``loading`` from now on, so ``/api/ready`` stays 503; a request
        for one of them meanwhile waits for that load (the manager loads each model once).
        """
        self.manager.mark_loading(self.preload_ids)
        if self.kb_installer is not None:
            self.kb_installer.start(delay_s=delay_s)

        def run() -> None:
            time.sleep(delay_s)
            self.analyzer.warm_up(self.settings.heatmap_colormap)
            self.manager.preload(self.preload_ids, background=False)

        thread = threading.Thread(target=run, name="doctorai-startup", daemon=True)
        thread.start()
        return thread


def gpu_present() -> bool:
    """An NVIDIA GPU device node or driver is visible (cheap: TensorFlow is not imported here)."""
    from pathlib import Path

    driver = Path("/proc/driver/nvidia/gpus")
    return Path("/dev/nvidia0").exists() or (driver.is_dir() and any(driver.iterdir()))


def resolve_batching(settings: Settings) -> bool:
    """``DOCTORAI_BATCHING``, else on when the models run on a GPU and off on CPU.

    Measured with ``bench/bench_load.py`` on the 2-core CPU this project runs on: batching on gave
    0.75-0.84x the throughput of batching off at 2, 4 and 8 clients (1.10x only at 16); the CPU
    already runs concurrent batch-1 forwards side by side. A GPU runs a batch of 8 for about the
    price of one, which is what the batcher is for."""
    if settings.batching is not None:
        return settings.batching
    on = settings.device == "gpu" or (settings.device == "auto" and gpu_present())
    log.info("micro-batching %s (DOCTORAI_BATCHING unset: on with a GPU, off on CPU)", "on" if on else "off")
    return on


def resolve_preload(settings: Settings, registry: Registry, manager: ModelManager) -> list[str]:
    """``DOCTORAI_PRELOAD``: ``all`` (the default) = every installed image model, in registry
    order; an empty list (``none``) = nothing; else the listed ids (unknown ones are logged)."""
    wanted = settings.preload
    if wanted == ["all"]:
        return [s.id for s in registry.image_models() if manager.missing_weights_message(s.id) is None]
    unknown = [m for m in wanted if m not in registry]
    if unknown:
        log.warning("DOCTORAI_PRELOAD names unknown models %s; known: %s", unknown, sorted(s.id for s in registry))
    return [m for m in wanted if m in registry]


def build_kb_installer(settings: Settings, registry: Registry, manager: ModelManager) -> CorpusInstaller | None:
    """The background MedQuAD fetch, when it is on (``DOCTORAI_KB_AUTO_FETCH``, default in
    development), the registry has a chat model, no corpus is configured and no index exists."""
    chat = [s for s in registry if s.backend == "chat"]
    if not chat or not settings.resolved_kb_auto_fetch or settings.kb_source is not None:
        return None
    from inference.kb import resolve_kb_dir
    from inference.kb_fetch import MEDQUAD_URL, ArchiveLimits, CorpusInstaller

    kb_dir = resolve_kb_dir(settings.kb_dir, settings.data_dir, str(chat[0].options.get("kb_dir", "kb")))
    chat_id = chat[0].id

    def load_chat() -> None:  # so the first question after the fetch does not wait for the load
        manager.get_model(chat_id)

    installer = CorpusInstaller(
        settings.data_dir,
        kb_dir,
        url=settings.kb_fetch_url or MEDQUAD_URL,
        expected_sha256=settings.kb_fetch_sha256,
        limits=ArchiveLimits(max_bytes=int(settings.kb_fetch_max_mb * 2**20)),
        on_done=load_chat,
    )
    return installer if installer.needed() else None


def build_runtime(settings: Settings, registry: Registry | None = None) -> Runtime:
    """Cheap: reads the registry and opens the cache; loads no model."""
    registry = registry or Registry.from_yaml(settings.registry_file)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from inference.backends.chat import chat_kind  # light: torch loads with the chat model, not here

    manager = ModelManager(
        registry,
        settings.model_dir,
        device=settings.device,
        memory_budget_bytes=settings.memory_budget_mb * 2**20,
        kinds={"chat": chat_kind(settings)},
        serve_experimental=settings.experimental_models,
    )
    cache = PredictionCache(
        settings.resolved_cache_dir if settings.cache_enabled else None,
        size_limit_bytes=settings.cache_size_mb * 2**20,
        ttl_s=settings.cache_ttl_s,
        redis_url=settings.redis_url,
    )
    analyzer = Analyzer(
        manager,
        cache,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        batching=resolve_batching(settings),
        batch_max_size=settings.batch_max_size,
        batch_max_wait_ms=settings.batch_max_wait_ms,
    )
    log.info("runtime ready: %d models registered, model dir %s", len(registry), settings.model_dir)
    return Runtime(
        settings,
        registry,
        manager,
        cache,
        analyzer,
        preload_ids=resolve_preload(settings, registry, manager),
        kb_installer=build_kb_installer(settings, registry, manager),
    )
