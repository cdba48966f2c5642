"""Gradio's file and event handling, made per user, for the whole mounted app.

``gr.mount_gradio_app`` leaves ``Blocks.has_launched`` false, and Gradio's path check
(``processing_utils._check_allowed``) then lets every client-supplied ``FileData`` path through:
the file is copied into Gradio's cache and served back (issue #15). And even a launched app
accepts any file in its upload folder, whoever uploaded it. :func:`install_gradio_guard` fixes
both where Gradio's own checks run, so every event of every tab, including tabs added later,
is covered without code of its own:

* the Blocks behave as launched, and the path check of client input (``_check_allowed`` with
  ``check_in_upload_folder``) additionally requires the file to lie in the upload folder (after
  resolving ``..`` and symlinks) *and* to belong to the calling user;
* files that reach the upload folder are recorded with their owner: uploads (``POST
  /gradio_api/upload``) and the outputs of an event (heatmaps, the audit CSV export), so
  ``GET /gradio_api/file=...`` serves a cached file only to its owner (others get 404);
* uploads are limited per user: files per request, uploads per minute, bytes held;
* events are looked up once (``route_utils.get_fn``): an unknown ``fn_index`` or API name is a
  404, and an event marked ``api_visibility="private"`` cannot be called by name (the browser
  UI calls events by index in its own session, which stays allowed);
* the data, model and knowledge-base folders are Gradio ``blocked_paths``.

These are hooks into Gradio internals (6.x). :func:`install_gradio_guard` checks that each one
is still there and refuses to start the app otherwise: an upgrade that moves them must fail
closed, not silently reopen the hole. ``tests/test_gradio_files.py`` drives the attacks.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Both the browser and gradio_client upload one file per component per request; a few more
# leave room for multi-file components without letting one request park 50 files.
MAX_FILES_PER_UPLOAD = 4
# Gradio deletes cached files older than 15 min (tabs/__init__.py: delete_cache=(300, 900)); an
# ownership record outlives its file a little, never the other way round.
OWNERSHIP_TTL_S = 1200.0
PUBLIC = "*"  # owner of files Gradio caches while the UI is built (no request, no user)

_current_user: ContextVar[str | None] = ContextVar("doctorai_gradio_user", default=None)
_installed = False
_install_lock = threading.Lock()


@dataclass
class _Held:
    owners: set[str]
    size: int
    expires: float


@dataclass
class CacheFiles:
    """Who may use which file in Gradio's upload folder, and how much each user holds there."""

    root: Path
    quota_bytes: int
    uploads_per_minute: int
    ttl_s: float = OWNERSHIP_TTL_S
    clock: Callable[[], float] = time.monotonic
    _files: dict[str, _Held] = field(default_factory=dict)
    _uploads: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))

    def resolve(self, path: str | os.PathLike[str]) -> str | None:
        """The real path (``..`` and symlinks resolved) when it lies inside the upload folder."""
        try:
            real = Path(os.path.realpath(os.path.abspath(os.fspath(path))))
        except (OSError, ValueError, TypeError):
            return None
        return str(real) if real.is_relative_to(self.root) else None

    def grant(self, path: str | os.PathLike[str], user: str, size: int | None = None) -> None:
        """Let ``user`` use ``path`` (a no-op outside the upload folder)."""
        real = self.resolve(path)
        if real is None:
            return
        size = _size(real) if size is None else size
        now = self.clock()
        with self._lock:
            held = self._files.get(real)
            if held is None or held.expires < now:
                self._files[real] = _Held({user}, size, now + self.ttl_s)
            else:
                held.owners.add(user)
                held.size = max(held.size, size)
                held.expires = now + self.ttl_s
            if len(self._files) > 50_000:  # expired records go first; files are gone by then
                self._files = {k: v for k, v in self._files.items() if v.expires >= now}

    def may_use(self, path: str | os.PathLike[str], user: str | None) -> bool:
        """True only for a file inside the upload folder that ``user`` uploaded or was sent."""
        real = self.resolve(path)
        if real is None or not user:
            return False
        with self._lock:
            held = self._files.get(real)
            if held is None or held.expires < self.clock():
                return False
            return user in held.owners or PUBLIC in held.owners

    def held_bytes(self, user: str) -> int:
        now = self.clock()
        with self._lock:
            return sum(h.size for p, h in self._files.items() if user in h.owners and h.expires >= now)

    def upload_wait(self, user: str) -> float | None:
        """Count one upload; None when allowed, else seconds until the next is."""
        if self.uploads_per_minute <= 0:
            return None
        now = self.clock()
        with self._lock:
            recent = [t for t in self._uploads.get(user, []) if t > now - 60.0]
            if len(recent) >= self.uploads_per_minute:
                self._uploads[user] = recent
                return recent[0] + 60.0 - now
            recent.append(now)
            self._uploads[user] = recent
            return None


def gradio_upload_dir() -> str:
    """Gradio's upload folder (``GRADIO_TEMP_DIR``, else ``<tmp>/gradio``)."""
    from gradio import utils

    return str(utils.get_upload_folder())


def _files_of(blocks: Any) -> CacheFiles | None:
    files = getattr(blocks, "_doctorai_files", None)
    return files if isinstance(files, CacheFiles) else None


def _request_user(request: Any) -> str | None:
    """The signed-in user of a Starlette request (set by :class:`auth.web.AuthGate`)."""
    from auth.service import Principal

    p = getattr(request, "scope", {}).get("state", {}).get("principal")
    return p.username if isinstance(p, Principal) else None


def _file_paths(data: Any) -> Iterable[str]:
    """Every ``path`` of a ``FileData`` dict nested anywhere in ``data``."""
    if isinstance(data, dict):
        meta = data.get("meta")
        if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData" and isinstance(data.get("path"), str):
            yield data["path"]
        for value in data.values():
            yield from _file_paths(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _file_paths(value)


def install_gradio_guard(
    blocks: Any, *, upload_dir: str, blocked: Iterable[Path], quota_bytes: int, per_minute: int
) -> CacheFiles:
    """Hook Gradio's checks once per process and attach a :class:`CacheFiles` to ``blocks``."""
    files = CacheFiles(Path(upload_dir), quota_bytes, per_minute)
    blocks._doctorai_files = files
    # Gradio's own check of client-supplied paths runs only for a launched app.
    blocks.has_launched = True
    blocks.blocked_paths = [*blocks.blocked_paths, *(str(Path(p).resolve()) for p in blocked)]
    _install_hooks()
    return files


def _install_hooks() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        from fastapi import HTTPException
        from gradio import processing_utils, route_utils, routes, utils
        from gradio.blocks import Blocks
        from gradio.exceptions import InvalidPathError

        needed = {
            processing_utils: ("_check_allowed", "move_files_to_cache", "async_move_files_to_cache"),
            route_utils: ("get_fn",),
            routes: ("file_fetch", "upload_fn"),
            utils: ("set_static_paths",),
            Blocks: ("process_api",),
        }
        missing = [
            f"{getattr(m, '__name__', m)}.{a}" for m, attrs in needed.items() for a in attrs if not hasattr(m, a)
        ]
        if missing:  # fail closed: without these hooks the file-read hole is open again
            raise RuntimeError(f"this Gradio version lacks {missing}; DoctorAI's file guard cannot be installed")

        check_allowed = processing_utils._check_allowed

        def guarded_check_allowed(path: str | Path, check_in_upload_folder: bool) -> None:
            from gradio.context import LocalContext

            files = _files_of(LocalContext.blocks.get(None))
            if files is not None and check_in_upload_folder and not files.may_use(path, _current_user.get()):
                # Client input: only what this user uploaded (or was sent by an event) may be used.
                raise InvalidPathError("this file was not uploaded by you or has expired; upload it again")
            check_allowed(path, check_in_upload_folder)

        processing_utils._check_allowed = guarded_check_allowed

        def granting(fn: Callable[..., Any]) -> Callable[..., Any]:
            def grant(result: Any, block: Any) -> Any:
                from gradio.context import LocalContext

                files = _files_of(LocalContext.blocks.get(None))
                if files is not None:
                    user = _current_user.get()
                    for path in _file_paths(result):
                        files.grant(path, user or PUBLIC)
                return result

            if inspect.iscoroutinefunction(fn):

                async def async_wrapper(data: Any, block: Any, *args: Any, **kwargs: Any) -> Any:
                    return grant(await fn(data, block, *args, **kwargs), block)

                return async_wrapper

            def wrapper(data: Any, block: Any, *args: Any, **kwargs: Any) -> Any:
                return grant(fn(data, block, *args, **kwargs), block)

            return wrapper

        processing_utils.move_files_to_cache = granting(processing_utils.move_files_to_cache)
        processing_utils.async_move_files_to_cache = granting(processing_utils.async_move_files_to_cache)

        get_fn = route_utils.get_fn

        def checked_get_fn(blocks: Any, api_name: str | None, body: Any) -> Any:
            if _files_of(blocks) is None:
                return get_fn(blocks, api_name, body)
            try:
                fn = get_fn(blocks, api_name, body)
            except (KeyError, route_utils.FnIndexInferError) as exc:
                raise HTTPException(404, "no such event; see /gradio_api/info for the API") from exc
            if body.fn_index is None and getattr(fn, "api_visibility", "public") == "private":
                # Called by name: only public and undocumented events have one.
                raise HTTPException(404, "no such event; see /gradio_api/info for the API")
            return fn

        route_utils.get_fn = checked_get_fn

        file_fetch = routes.file_fetch

        def owned_file_fetch(path_or_url: str, request: Any, blocks_or_config: Any, upload_dir: str) -> Any:
            files = _files_of(blocks_or_config)
            inside = files is not None and files.resolve(path_or_url) is not None
            if inside and not files.may_use(path_or_url, _request_user(request)):  # type: ignore[union-attr]
                # 404, not 403: whether someone else's file exists is not for this user to learn.
                raise HTTPException(404, "file not found (cached files are served only to their owner)")
            return file_fetch(path_or_url, request, blocks_or_config, upload_dir)

        routes.file_fetch = owned_file_fetch

        upload_fn = routes.upload_fn

        async def limited_upload_fn(request: Any, upload_dir: str, *args: Any, **kwargs: Any) -> Any:
            app = request.scope.get("app")
            files = _files_of(app.get_blocks()) if hasattr(app, "get_blocks") else None
            if files is None:
                return await upload_fn(request, upload_dir, *args, **kwargs)
            user = _request_user(request)
            if user is None:
                raise HTTPException(401, "log in first")
            wait = files.upload_wait(user)
            if wait is not None:
                raise HTTPException(
                    429,
                    f"at most {files.uploads_per_minute} uploads per minute; try again in {wait:.0f} s",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
            output_files, to_copy, locations = await upload_fn(request, upload_dir, *args, **kwargs)
            # A file Gradio could not rename into place is copied in the background: count its source.
            source = {str(dst): str(src) for src, dst in zip(to_copy, locations, strict=True)}
            sizes = [_size(source.get(str(p), str(p))) for p in output_files]
            problem = None
            if len(output_files) > MAX_FILES_PER_UPLOAD:
                problem = (413, f"at most {MAX_FILES_PER_UPLOAD} files per upload")
            elif files.held_bytes(user) + sum(sizes) > files.quota_bytes:
                problem = (413, f"you hold more than {files.quota_bytes / 2**20:.0f} MB of uploads; analyse or wait")
            if problem is not None:
                for p in [*to_copy, *output_files]:
                    Path(p).unlink(missing_ok=True)
                raise HTTPException(*problem)
            for p, size in zip(output_files, sizes, strict=True):
                files.grant(p, user, size)
            return output_files, to_copy, locations

        routes.upload_fn = limited_upload_fn

        set_static_paths = utils.set_static_paths

        def no_static_uploads(paths: Any) -> None:
            # Gradio marks an SVG it moves as "static" (served to anyone, skipping every check)
            # while the app is not "running", which a mounted app never is. Uploads never are.
            items = paths if isinstance(paths, (list, tuple)) else [paths]
            upload_root = os.path.realpath(utils.get_upload_folder())
            kept = [p for p in items if not os.path.realpath(str(p)).startswith(upload_root + os.sep)]
            if kept:
                set_static_paths(kept)

        utils.set_static_paths = no_static_uploads

        process_api = Blocks.process_api
        signature = inspect.signature(process_api)

        async def process_api_as_user(self: Any, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(self, *args, **kwargs)
            request = bound.arguments.get("request")
            if isinstance(request, list):
                request = request[0] if request else None
            token = _current_user.set(getattr(request, "username", None) if request is not None else None)
            try:
                return await process_api(self, *args, **kwargs)
            finally:
                _current_user.reset(token)

        Blocks.process_api = process_api_as_user  # type: ignore[method-assign]
        _installed = True
        log.info("Gradio file guard installed (per-user cache files, private events, upload limits)")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


__all__ = ["MAX_FILES_PER_UPLOAD", "CacheFiles", "gradio_upload_dir", "install_gradio_guard"]
