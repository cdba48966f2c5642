"""The one shared model manager: lazy, thread-safe loading, per-model state, LRU unloading.

States (as reported by ``/api/ready``):

* ``not_installed`` - the weights file is absent (or the backend is not available here; kinds
  registered with a :class:`BackendKind`, such as chat, decide this themselves);
* ``not_loaded``    - weights present, not loaded yet (loaded on first use);
* ``loading``       - a thread is loading it; other requests wait for that one load;
* ``ready``         - loaded and warmed up;
* ``failed``        - loading failed; ``error`` says why. A later request retries.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, cast

from inference.backends.base import Backend, DevicePolicy
from inference.errors import DoctorAIError, InvalidInput, ModelExperimental, ModelLoadFailed, ModelNotInstalled
from inference.registry import ModelSpec, Registry, file_sha256

log = logging.getLogger(__name__)

BackendLoader = Callable[[ModelSpec, Path, DevicePolicy], Backend]


class LoadedModel(Protocol):
    """What the manager needs from anything it loads (image backends, the chat model, ...)."""

    def warm_up(self) -> None: ...

    def memory_bytes(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendKind:
    """A backend kind whose installation is not "one weights file".

    ``is_installed(spec, model_dir)`` returns ``(ok, how-to-install message)``; ``load(spec,
    model_dir, device)`` gets the model folder instead of a weights path. The chat kind uses it:
    installed means a knowledge base index exists or its corpus is configured.
    """

    load: Callable[[ModelSpec, Path, DevicePolicy], LoadedModel]
    is_installed: Callable[[ModelSpec, Path], tuple[bool, str | None]]


class ModelState(StrEnum):
    NOT_INSTALLED = "not_installed"
    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DISABLED = "disabled"  # experimental (below its floor) and DOCTORAI_EXPERIMENTAL_MODELS is off


def default_loaders() -> dict[str, BackendLoader]:
    """Backend kinds this build can run, imported only when a model of that kind loads."""

    def keras_image(spec: ModelSpec, path: Path, device: DevicePolicy) -> Backend:
        from inference.backends.keras_image import KerasImageBackend

        return KerasImageBackend.load(spec, path, device)

    def xgboost_palm(spec: ModelSpec, path: Path, device: DevicePolicy) -> Backend:
        from inference.backends.xgboost_palm import XGBoostPalmBackend

        return XGBoostPalmBackend.load(spec, path, device)

    def xgboost_conjunctiva(spec: ModelSpec, path: Path, device: DevicePolicy) -> Backend:
        from inference.backends.xgboost_conjunctiva import XGBoostConjunctivaBackend

        return XGBoostConjunctivaBackend.load(spec, path, device)

    return {"keras_image": keras_image, "xgboost_palm": xgboost_palm, "xgboost_conjunctiva": xgboost_conjunctiva}


@dataclass
class _Slot:
    spec: ModelSpec
    lock: threading.Lock
    state: ModelState = ModelState.NOT_LOADED
    backend: LoadedModel | None = None
    error: str | None = None
    load_seconds: float | None = None
    loads: int = 0


class ModelManager:
    """Loads each model once per process, on first use, and shares it with every caller."""

    def __init__(
        self,
        registry: Registry,
        model_dir: Path,
        *,
        device: DevicePolicy = "auto",
        memory_budget_bytes: int = 0,
        loaders: dict[str, BackendLoader] | None = None,
        verify_checksums: bool = True,
        kinds: dict[str, BackendKind] | None = None,
        serve_experimental: bool = True,
    ) -> None:
        # serve_experimental: the app passes DOCTORAI_EXPERIMENTAL_MODELS (off by default);
        # measuring tools (evaluate, benches) keep the default and see every model.
        self.serve_experimental = serve_experimental
        self.registry = registry
        self.model_dir = Path(model_dir)
        self.device = device
        self.memory_budget_bytes = memory_budget_bytes
        self.loaders = loaders if loaders is not None else default_loaders()
        self.verify_checksums = verify_checksums
        self.kinds: dict[str, BackendKind] = dict(kinds or {})
        self._slots = {spec.id: _Slot(spec, threading.Lock()) for spec in registry}
        self._lru: OrderedDict[str, None] = OrderedDict()  # ready models, least recently used first
        self._lru_lock = threading.Lock()
        self._preload_thread: threading.Thread | None = None

    def register_kind(self, name: str, kind: BackendKind) -> None:
        """Add (or replace) a backend kind with its own installation rule, e.g. ``chat``."""
        self.kinds[name] = kind

    # ----------------------------------------------------------------- state
    def _installed(self, spec: ModelSpec) -> tuple[bool, str | None]:
        kind = self.kinds.get(spec.backend)
        if kind is not None:
            return kind.is_installed(spec, self.model_dir)
        if spec.backend not in self.loaders:
            return False, f"the {spec.backend} backend is not available in this build"
        path = spec.weights_path(self.model_dir)
        if path is None:
            return False, "no weights file configured"
        if not path.exists():
            return False, f"model not installed: put {path.name} in {path.parent}"
        return True, None

    def experimental_reason(self, model_id: str) -> str | None:
        """Why the model is experimental (:attr:`ModelSpec.below_floor`), or None."""
        return self._slot(model_id).spec.below_floor

    def disabled_message(self, model_id: str) -> str | None:
        """The user-facing reason an experimental model is not served here, or None."""
        spec = self._slot(model_id).spec
        reason = spec.below_floor
        if reason is None or self.serve_experimental:
            return None
        return (
            f"{spec.display_name} is experimental and not served: {reason}. "
            "An administrator can enable experimental models with DOCTORAI_EXPERIMENTAL_MODELS=true"
        )

    def state(self, model_id: str) -> ModelState:
        slot = self._slot(model_id)
        if self.disabled_message(model_id) is not None:
            return ModelState.DISABLED
        if slot.state in (ModelState.NOT_LOADED, ModelState.NOT_INSTALLED):
            ok, _ = self._installed(slot.spec)
            return ModelState.NOT_LOADED if ok else ModelState.NOT_INSTALLED
        return slot.state

    def status(self) -> dict[str, dict[str, Any]]:
        """Per-model state for ``/api/ready``."""
        out: dict[str, dict[str, Any]] = {}
        for model_id, slot in self._slots.items():
            state = self.state(model_id)
            entry: dict[str, Any] = {"state": state.value, "version": slot.spec.version}
            if state is ModelState.NOT_INSTALLED:
                entry["detail"] = self._installed(slot.spec)[1]
            if state is ModelState.FAILED:
                entry["error"] = slot.error
            reason = slot.spec.below_floor
            if reason is not None:
                entry["experimental"] = reason
            if slot.load_seconds is not None:
                entry["load_seconds"] = round(slot.load_seconds, 3)
            out[model_id] = entry
        return out

    def missing_weights_message(self, model_id: str) -> str | None:
        """A user-facing "how to install" message, or None when the weights are present."""
        return self._installed(self._slot(model_id).spec)[1]

    def _slot(self, model_id: str) -> _Slot:
        spec = self.registry[model_id]  # raises UnknownModel with the known ids
        return self._slots[spec.id]

    # ------------------------------------------------------------------ load
    def get(self, model_id: str) -> Backend:
        """The loaded image backend, loading it on first use. Concurrent first calls load once."""
        if self._slot(model_id).spec.backend in self.kinds:
            raise InvalidInput(f"{model_id} is not an image model")
        return cast(Backend, self.get_model(model_id))

    def get_model(self, model_id: str) -> LoadedModel:
        """Like :meth:`get` for any kind (the chat model included)."""
        slot = self._slot(model_id)
        disabled = self.disabled_message(model_id)
        if disabled is not None:
            raise ModelExperimental(disabled)
        backend = slot.backend
        if backend is not None:  # fast path, no lock on the hot path
            self._touch(model_id)
            return backend
        with slot.lock:
            if slot.backend is not None:
                self._touch(model_id)
                return slot.backend
            return self._load_locked(slot)

    def _load_locked(self, slot: _Slot) -> LoadedModel:
        spec = slot.spec
        ok, why = self._installed(spec)
        if not ok:
            slot.state = ModelState.NOT_INSTALLED
            raise ModelNotInstalled(f"{spec.display_name}: {why}")
        kind = self.kinds.get(spec.backend)
        path = spec.weights_path(self.model_dir) if kind is None else self.model_dir
        assert path is not None
        slot.state = ModelState.LOADING
        t0 = time.perf_counter()
        backend: LoadedModel
        try:
            if self.verify_checksums and kind is None and spec.weights and spec.weights.sha256:
                actual = file_sha256(path)
                if actual != spec.weights.sha256:
                    raise ModelLoadFailed(
                        f"{path.name} does not match the sha256 in the registry (got {actual[:12]}..., "
                        f"expected {spec.weights.sha256[:12]}...); reinstall the file"
                    )
            if kind is not None:
                backend = kind.load(spec, path, self.device)
            else:
                backend = self.loaders[spec.backend](spec, path, self.device)
            backend.warm_up()
        except DoctorAIError as exc:
            self._fail(slot, exc.message)
            raise
        except Exception as exc:  # a broken model must never take the process down
            log.exception("loading %s failed", spec.id)
            self._fail(slot, f"{type(exc).__name__}: {exc}")
            raise ModelLoadFailed(f"{spec.display_name} could not be loaded: {exc}") from exc
        slot.load_seconds = time.perf_counter() - t0
        slot.loads += 1
        slot.error = None
        slot.backend = backend
        slot.state = ModelState.READY
        log.info("loaded %s v%s in %.2fs", spec.id, spec.version, slot.load_seconds)
        self._touch(spec.id)
        self._enforce_budget(keep=spec.id)
        return backend

    def _fail(self, slot: _Slot, message: str) -> None:
        slot.state = ModelState.FAILED
        slot.error = message
        log.error("model %s failed to load: %s", slot.spec.id, message)

    def _touch(self, model_id: str) -> None:
        with self._lru_lock:
            self._lru[model_id] = None
            self._lru.move_to_end(model_id)

    def _enforce_budget(self, keep: str) -> None:
        if self.memory_budget_bytes <= 0:
            return
        with self._lru_lock:
            order = list(self._lru)
        total = sum(self._mem(m) for m in order)
        for victim in order:
            if total <= self.memory_budget_bytes:
                break
            if victim == keep:
                continue
            total -= self._mem(victim)
            self.unload(victim)

    def _mem(self, model_id: str) -> int:
        backend = self._slots[model_id].backend
        return backend.memory_bytes() if backend is not None else 0

    def unload(self, model_id: str) -> None:
        """Drop a loaded model; the next use loads it again."""
        slot = self._slot(model_id)
        with slot.lock:
            backend, slot.backend = slot.backend, None
            if slot.state is ModelState.READY:
                slot.state = ModelState.NOT_LOADED
        with self._lru_lock:
            self._lru.pop(model_id, None)
        if backend is not None:
            backend.close()
            gc.collect()
            log.info("unloaded %s", model_id)

    def mark_loading(self, model_ids: Iterable[str]) -> None:
        """Report installed, not yet loaded models as ``loading`` (a preload is scheduled)."""
        for model_id in model_ids:
            if model_id in self.registry:
                slot = self._slots[model_id]
                if (
                    slot.state is ModelState.NOT_LOADED
                    and self._installed(slot.spec)[0]
                    and self.disabled_message(model_id) is None
                ):
                    slot.state = ModelState.LOADING

    def preload(self, model_ids: Iterable[str], background: bool = True) -> None:
        """Load the listed models now (in a daemon thread by default); errors end up in
        their state. Until each one is ready, it reports ``loading``."""
        ids = [m for m in model_ids if m in self.registry]
        self.mark_loading(ids)

        def run() -> None:
            for model_id in ids:
                try:
                    self.get_model(model_id)
                except DoctorAIError as exc:
                    log.warning("preload of %s skipped: %s", model_id, exc.message)

        if background:
            self._preload_thread = threading.Thread(target=run, name="doctorai-preload", daemon=True)
            self._preload_thread.start()
        else:
            run()

    def loaded(self) -> list[str]:
        return [m for m, s in self._slots.items() if s.backend is not None]

    def load_count(self, model_id: str) -> int:
        return self._slot(model_id).loads
