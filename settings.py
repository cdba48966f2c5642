"""The one typed settings object for DoctorAI.

Every knob is read from ``DOCTORAI_*`` environment variables (or a ``.env`` file) here and
nowhere else; the rest of the code receives a :class:`Settings` instance.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_SECRET = "change-me"  # noqa: S105 - a sentinel that production refuses, not a credential
SPACES_STORAGE = Path("/data")  # Hugging Face Spaces' persistent storage mount


def _writable_dir(path: Path) -> bool:
    import os

    return path.is_dir() and os.access(path, os.W_OK)


class Settings(BaseSettings):
    """Runtime configuration. Defaults run a self-contained single process."""

    model_config = SettingsConfigDict(env_prefix="DOCTORAI_", env_file=".env", extra="ignore", populate_by_name=True)

    env: Literal["development", "production"] = "development"
    # Hugging Face Spaces runs `python app.py` with GRADIO_SERVER_NAME / GRADIO_SERVER_PORT set and
    # never applies an `env:` block, so the platform's names count when DOCTORAI_* are unset.
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("DOCTORAI_HOST", "GRADIO_SERVER_NAME"))
    port: int = Field(7860, ge=1, le=65535, validation_alias=AliasChoices("DOCTORAI_PORT", "GRADIO_SERVER_PORT"))
    space_id: str | None = Field(
        None,
        validation_alias=AliasChoices("DOCTORAI_SPACE_ID", "SPACE_ID"),
        description="set by Hugging Face Spaces; unless DOCTORAI_HOST says otherwise, listen on 0.0.0.0",
    )

    data_dir: Path = PROJECT_ROOT / "data"
    model_dir: Path = PROJECT_ROOT / "assets" / "models"
    registry_file: Path = PROJECT_ROOT / "assets" / "models.yaml"

    secret_key: str = DEFAULT_SECRET
    admin_password: str | None = Field(None, description="first-run admin password; unset = random, printed once")

    # accounts, sessions and audit (auth/)
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///DATA_DIR/doctorai.db")
    bcrypt_rounds: int = Field(12, ge=4, le=18, description="bcrypt cost; keep >= 12 outside tests")
    session_ttl_s: int = Field(8 * 3600, ge=60, description="browser session lifetime")
    access_token_ttl_s: int = Field(15 * 60, ge=10, description="JWT access token lifetime")
    refresh_token_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="refresh token lifetime")
    login_max_failures: int = Field(5, ge=1, description="failed logins of one account before it locks")
    login_ip_max_failures: int = Field(20, ge=1, description="failed logins from one IP before it locks")
    login_lockout_s: float = Field(30.0, gt=0, description="first lockout; doubles with each further failure")
    login_lockout_max_s: float = Field(900.0, gt=0, description="longest lockout")
    analyses_per_minute: int = Field(60, ge=0, description="analyses and chat questions per user per minute; 0 = off")
    audit_keep_inputs: bool = Field(False, description="also store each analysed input under DATA_DIR/audit_inputs")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed to call the API from a browser; empty = same origin only"
    )
    forwarded_allow_ips: str = Field("127.0.0.1", description="proxies trusted for X-Forwarded-Proto/-For")
    max_request_kb: int = Field(1024, ge=1, description="largest non-upload request body (JSON, forms)")
    # Gradio uploads (issue #15): per user, so no account can fill the disk.
    uploads_per_minute: int = Field(30, ge=0, description="Gradio uploads per user per minute; 0 = off")
    upload_quota_mb: float = Field(128.0, gt=0, description="most bytes one user may hold in Gradio's upload cache")

    # single sign-on (OpenID Connect); unset issuer = off
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_name: str = Field("Single sign-on", description="button text on the login page")
    oidc_scopes: str = "openid email profile"
    oidc_allowed_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="e-mail domains allowed to sign in; empty = any"
    )
    oidc_role_claim: str = Field("groups", description="claim holding the user's groups or roles")
    oidc_role_map: dict[str, str] = Field(
        default_factory=dict, description='JSON {"group": "admin|clinician|researcher"}; first match wins'
    )
    sso_default_role: Literal["admin", "clinician", "researcher"] = "clinician"
    # Hugging Face Spaces OAuth: Spaces injects these (hf_oauth: true in the README front matter)
    hf_oauth_client_id: str | None = Field(
        None, validation_alias=AliasChoices("DOCTORAI_HF_OAUTH_CLIENT_ID", "OAUTH_CLIENT_ID")
    )
    hf_oauth_client_secret: str | None = Field(
        None, validation_alias=AliasChoices("DOCTORAI_HF_OAUTH_CLIENT_SECRET", "OAUTH_CLIENT_SECRET")
    )
    hf_oauth_scopes: str = Field(
        "openid profile", validation_alias=AliasChoices("DOCTORAI_HF_OAUTH_SCOPES", "OAUTH_SCOPES")
    )
    hf_openid_provider_url: str = Field(
        "https://huggingface.co",
        validation_alias=AliasChoices("DOCTORAI_HF_OPENID_PROVIDER_URL", "OPENID_PROVIDER_URL"),
    )
    space_host: str | None = Field(None, validation_alias=AliasChoices("DOCTORAI_SPACE_HOST", "SPACE_HOST"))

    device: Literal["auto", "cpu", "gpu"] = "auto"
    preload: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["all"],
        description="model ids to load after start-up; all = every installed image model; none",
    )
    memory_budget_mb: int = Field(6144, ge=0, description="unload least-recently-used models above this; 0 = no limit")
    experimental_models: bool = Field(
        False, description="also serve models whose own evidence misses their floor (marked experimental)"
    )

    cache_enabled: bool = True
    cache_dir: Path | None = None
    cache_size_mb: int = Field(512, ge=1)
    cache_ttl_s: int = Field(3600, ge=0, description="0 = keep until evicted by size")
    redis_url: str | None = Field(None, description="redis://host:6379/0: prediction cache shared by replicas")

    max_upload_mb: float = Field(32.0, gt=0)
    max_pixels: int = Field(40_000_000, gt=0, description="decompression-bomb guard")
    decode_memory_mb: int = Field(
        384, ge=16, description="memory all image decodes in flight may claim together (bounds peak RSS)"
    )

    batching: bool | None = Field(
        None,
        description="gather concurrent requests for one model into one batch; unset = on with a GPU, off on CPU "
        "(bench/bench_load.py: on a 2-core CPU batching lowered throughput at 2-8 clients)",
    )
    batch_max_size: int = Field(8, ge=1, le=256)
    batch_max_wait_ms: float = Field(3.0, ge=0.0, le=100.0)
    # Gradio's queue polls for work every 1 ms while idle (and every 10 ms for progress): about
    # 1,100 event-loop wake-ups a second, each taking the GIL from the threads serving requests.
    # A queued UI event waits at most this long before it starts.
    gradio_queue_poll_ms: float = Field(5.0, ge=0.5, le=100.0)

    log_format: Literal["json", "text"] | None = Field(
        None, description="unset = text when stderr is a terminal (a developer), JSON otherwise (containers)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_token: str | None = Field(
        None,
        description="bearer token Prometheus must send to /metrics; unset = open in development, off in production",
    )

    heatmap_opacity: float = Field(0.45, ge=0.0, le=1.0)
    heatmap_colormap: str = "jet"

    # chat / knowledge base (see the "Chat" section of the README)
    kb_source: Path | None = Field(None, description="corpus .jsonl[.gz] the chat knowledge base is built from")
    kb_dir: Path | None = Field(None, description="index folder; default DATA_DIR/<chat kb_dir>")
    kb_auto_build: bool = Field(True, description="build a missing or stale index on first chat use")
    kb_auto_fetch: bool | None = Field(
        None, description="fetch MedQuAD in the background on start when there is no index; unset = on in development"
    )
    kb_fetch_url: str | None = Field(None, description="archive to fetch; unset = MedQuAD at its pinned commit")
    kb_fetch_sha256: str | None = Field(None, description="expected archive sha256; unset = recorded, not checked")
    kb_fetch_max_mb: float = Field(200.0, gt=0, description="largest archive accepted")
    allow_network: bool = Field(False, description="let the chat generator download a Hub checkpoint")
    chat_generator: str | None = Field(None, description="overrides the chat spec's generator checkpoint")
    chat_max_chars: int = Field(2000, ge=1, le=100_000, description="longest accepted chat message")
    chat_max_history: int = Field(20, ge=0, le=1000, description="most history turns a chat request may carry")
    chat_concurrency: int = Field(4, ge=1, description="chat answers produced at the same time (UI)")
    torch_threads: int = Field(
        1, ge=0, description="torch intra-op CPU threads once chat loads (process-wide); 0 = torch default"
    )

    @field_validator("preload", "cors_origins", "oidc_allowed_domains", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # DOCTORAI_PRELOAD=brain_tumor,chest_xray or a JSON list.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            items = [v.strip() for v in text.split(",") if v.strip()]
            return [] if items == ["none"] else items  # DOCTORAI_PRELOAD=none: load nothing up front
        return value

    @model_validator(mode="after")
    def _spaces_defaults(self) -> Settings:
        # On a Space the platform's proxy reaches the app from outside the container: loopback
        # would refuse every request. Persistent storage, when enabled, is mounted at /data.
        if self.space_id and "host" not in self.model_fields_set:
            self.host = "0.0.0.0"
        if self.space_id and "data_dir" not in self.model_fields_set and _writable_dir(SPACES_STORAGE):
            self.data_dir = SPACES_STORAGE / "doctorai"
        return self

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.env == "production" and (not self.secret_key or self.secret_key == DEFAULT_SECRET):
            raise ValueError("DOCTORAI_SECRET_KEY must be set to a random value in production")
        if self.env == "production" and len(self.secret_key) < 32:
            raise ValueError("DOCTORAI_SECRET_KEY must be at least 32 characters in production")
        return self

    def resolved_log_format(self, stream: object = None) -> Literal["json", "text"]:
        """``DOCTORAI_LOG_FORMAT``, else text on a terminal and JSON lines elsewhere."""
        if self.log_format is not None:
            return self.log_format
        import sys

        target = stream if stream is not None else sys.stderr
        isatty = getattr(target, "isatty", None)
        return "text" if callable(isatty) and isatty() else "json"

    @property
    def resolved_kb_auto_fetch(self) -> bool:
        """Fetch MedQuAD on start when there is no index: ``DOCTORAI_KB_AUTO_FETCH``, else development only."""
        return self.env == "development" if self.kb_auto_fetch is None else self.kb_auto_fetch

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'doctorai.db'}"

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
