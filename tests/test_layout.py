"""Architecture rules: import-time cost and the direction of dependencies."""

from __future__ import annotations

import subprocess
import sys

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
    import pytest
    from pydantic import ValidationError

    from settings import Settings

    with pytest.raises(ValidationError, match="DOCTORAI_SECRET_KEY"):
        Settings(env="production")
    assert Settings(env="production", secret_key="s3cr3t-from-the-vault").env == "production"
