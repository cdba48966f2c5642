"""Builds the process-wide inference objects from settings (no web imports here)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from inference.cache import PredictionCache
from inference.manager import ModelManager
from inference.registry import Registry
from inference.service import Analyzer
from settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything the edges (tabs, REST API) share: one of each per process."""

    settings: Settings
    registry: Registry
    manager: ModelManager
    cache: PredictionCache
    analyzer: Analyzer

    def start_background(self, delay_s: float = 1.0) -> threading.Thread:
        """Warm the rendering path and preload ``settings.preload`` in a daemon thread.

        It starts ``delay_s`` after the server begins listening: importing TensorFlow holds
        the GIL for seconds and would otherwise delay the first ``/api/health`` answer.
        Preloaded models report ``loading`` from now on, so ``/api/ready`` stays 503.
        """
        self.manager.mark_loading(self.settings.preload)

        def run() -> None:
            time.sleep(delay_s)
            self.analyzer.warm_up(self.settings.heatmap_colormap)
            self.manager.preload(self.settings.preload, background=False)

        thread = threading.Thread(target=run, name="doctorai-startup", daemon=True)
        thread.start()
        return thread


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
        batching=settings.batching,
        batch_max_size=settings.batch_max_size,
        batch_max_wait_ms=settings.batch_max_wait_ms,
    )
    log.info("runtime ready: %d models registered, model dir %s", len(registry), settings.model_dir)
    return Runtime(settings, registry, manager, cache, analyzer)
