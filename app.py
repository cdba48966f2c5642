"""DoctorAI entry point: wires settings -> runtime -> FastAPI (REST) -> Gradio UI.

Nothing heavy happens at import: ``app`` is built on first attribute access, so
``uvicorn app:app`` works and ``import app`` stays cheap. No model loads until used
(or until the lifespan preloads ``DOCTORAI_PRELOAD``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from settings import Settings, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("doctorai")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app with the Gradio UI mounted at ``/``."""
    import gradio as gr
    from fastapi import FastAPI

    from api.chat import build_chat_router
    from api.gradio_guard import gradio_upload_dir, install_gradio_guard
    from api.logs import install_request_ids
    from api.observability import install_metrics
    from api.routes import APP_VERSION, build_router, install_error_handlers
    from auth.web import AuthGate, HardeningMiddleware, build_auth, build_auth_router, gradio_user
    from inference.runtime import build_runtime
    from tabs import CSS, build_ui, calm_gradio_queue

    settings = settings or get_settings()
    # Files this process creates (accounts database, Gradio's cache, CSV exports) are for its own
    # user only: 0600 files, 0700 folders, whatever the umask of the shell that started it.
    os.umask(0o077)
    runtime = build_runtime(settings)
    auth = build_auth(settings)  # opens + migrates the accounts database, creates the first admin

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start_background(delay_s=1.0)
        yield
        runtime.analyzer.close()
        runtime.cache.close()
        auth.db.dispose()

    api = FastAPI(title="DoctorAI", version=APP_VERSION, lifespan=lifespan)
    api.state.runtime = runtime
    api.state.auth = auth
    install_error_handlers(api)
    # Middleware runs outermost-last-added: request id -> metrics -> hardening (headers, body
    # limits) -> auth gate -> [OAuth state cookie] -> routes (FastAPI's and the mounted Gradio's).
    if auth.sso is not None:
        from starlette.middleware.sessions import SessionMiddleware

        from auth.sso import OAUTH_COOKIE, build_sso_router
        from auth.tokens import derive, resolve_secret

        api.add_middleware(
            SessionMiddleware,
            secret_key=derive(resolve_secret(settings), "oauth-state").hex(),
            session_cookie=OAUTH_COOKIE,
            max_age=600,
            same_site="lax",
            https_only=settings.env == "production",
        )
        api.include_router(build_sso_router(auth))
    api.add_middleware(AuthGate, ctx=auth)
    api.add_middleware(HardeningMiddleware, settings=settings)
    api.state.metrics = install_metrics(api, runtime)
    install_request_ids(api)
    api.include_router(build_auth_router(auth))
    api.include_router(build_router(runtime, auth))
    api.include_router(build_chat_router(runtime, auth))
    blocks = build_ui(runtime, auth)
    mounted = gr.mount_gradio_app(
        api,
        blocks,
        path="/",
        css=CSS,
        max_file_size=settings.max_upload_bytes,
        # Only gr.Error messages (the domain errors tabs convert) reach the client; anything else
        # is logged and answered as a bare "Error", never with internals.
        show_error=False,
        ssr_mode=False,
        footer_links=["api"],
        auth_dependency=gradio_user,
    )
    # Gradio's own file checks, completed for the mounted app: per-user cache files, no private
    # events by name, upload limits (api/gradio_guard.py). Once for the whole UI, so a tab added
    # later is covered without code of its own.
    install_gradio_guard(
        blocks,
        upload_dir=gradio_upload_dir(),
        blocked=[settings.data_dir, settings.model_dir, settings.resolved_cache_dir],
        quota_bytes=int(settings.upload_quota_mb * 2**20),
        per_minute=settings.uploads_per_minute,
    )
    calm_gradio_queue(blocks, settings.gradio_queue_poll_ms)
    return mounted


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # PEP 562: `uvicorn app:app` gets the app, built once, on first access.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)


def main() -> None:
    import uvicorn

    from api.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.resolved_log_format(), settings.log_level)
    # Bounded graceful shutdown: open streaming connections (gradio_client, queues) must not
    # keep a terminated replica alive.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=5,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_config=None,  # keep configure_logging's handlers (JSON lines with request ids)
    )


if __name__ == "__main__":
    main()
