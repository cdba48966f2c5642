"""The one typed settings object for DoctorAI.

Every knob is read from ``DOCTORAI_*`` environment variables (or a ``.env`` file) here and
nowhere else; the rest of the code receives a :class:`Settings` instance.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_SECRET = "change-me"  # noqa: S105 - a sentinel that production refuses, not a credential


class Settings(BaseSettings):
    """Runtime configuration. Defaults run a self-contained single process."""

    model_config = SettingsConfigDict(env_prefix="DOCTORAI_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)

    data_dir: Path = PROJECT_ROOT / "data"
    model_dir: Path = PROJECT_ROOT / "assets" / "models"
    registry_file: Path = PROJECT_ROOT / "assets" / "models.yaml"

    secret_key: str = DEFAULT_SECRET
    admin_password: str | None = None

    device: Literal["auto", "cpu", "gpu"] = "auto"
    preload: Annotated[list[str], NoDecode] = Field(default_factory=list)
    memory_budget_mb: int = Field(6144, ge=0, description="unload least-recently-used models above this; 0 = no limit")

    cache_enabled: bool = True
    cache_dir: Path | None = None
    cache_size_mb: int = Field(512, ge=1)
    cache_ttl_s: int = Field(3600, ge=0, description="0 = keep until evicted by size")

    max_upload_mb: float = Field(32.0, gt=0)
    max_pixels: int = Field(40_000_000, gt=0, description="decompression-bomb guard")

    batching: bool = Field(True, description="gather concurrent requests for one model into one batch")
    batch_max_size: int = Field(8, ge=1, le=256)
    batch_max_wait_ms: float = Field(3.0, ge=0.0, le=100.0)

    log_format: Literal["json", "text"] = "json"
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
    allow_network: bool = Field(False, description="let the chat generator download a Hub checkpoint")
    chat_generator: str | None = Field(None, description="overrides the chat spec's generator checkpoint")
    chat_max_chars: int = Field(2000, ge=1, le=100_000, description="longest accepted chat message")
    chat_max_history: int = Field(20, ge=0, le=1000, description="most history turns a chat request may carry")
    chat_concurrency: int = Field(4, ge=1, description="chat answers produced at the same time (UI)")
    torch_threads: int = Field(
        1, ge=0, description="torch intra-op CPU threads once chat loads (process-wide); 0 = torch default"
    )

    @field_validator("preload", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        # DOCTORAI_PRELOAD=brain_tumor,chest_xray or a JSON list.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [v.strip() for v in text.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.env == "production" and (not self.secret_key or self.secret_key == DEFAULT_SECRET):
            raise ValueError("DOCTORAI_SECRET_KEY must be set to a random value in production")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
