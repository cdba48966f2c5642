"""Architecture rules: import-time cost and the direction of dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_importing_app_is_cheap() -> None:
    mods = _modules_after("import app")
    assert not {"tensorflow", "keras", "torch", "gradio"} & mods


def test_inference_has_no_web_imports() -> None:
    mods = _modules_after("import inference, inference.manager, inference.service, inference.runtime")
    assert not {"gradio", "fastapi", "auth", "tabs", "api"} & mods
    assert "tensorflow" not in mods  # frameworks load with the first model, not at import


def test_production_refuses_the_default_secret() -> None:
    from pydantic import ValidationError

    from settings import Settings

    with pytest.raises(ValidationError, match="DOCTORAI_SECRET_KEY"):
        Settings(env="production")
    assert Settings(env="production", secret_key="s3cr3t-from-the-vault-0123456789abcdef").env == "production"


def test_settings_come_from_doctorai_env_vars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from settings import Settings

    monkeypatch.setenv("DOCTORAI_PRELOAD", "brain_tumor, chest_xray")
    monkeypatch.setenv("DOCTORAI_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DOCTORAI_DEVICE", "cpu")
    monkeypatch.setenv("DOCTORAI_MAX_UPLOAD_MB", "5")
    s = Settings()
    assert s.preload == ["brain_tumor", "chest_xray"]
    assert s.data_dir == tmp_path
    assert s.resolved_cache_dir == tmp_path / "cache"
    assert s.device == "cpu"
    assert s.max_upload_bytes == 5 * 2**20
    monkeypatch.setenv("DOCTORAI_PRELOAD", '["palm"]')
    assert Settings().preload == ["palm"]
