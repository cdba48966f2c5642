"""Container probe for DoctorAI: exit 0 when the app answers, 1 otherwise. Standard library only.

    python deploy/probe.py health   # liveness: GET /api/health (public)
    python deploy/probe.py ready    # readiness: GET /api/ready with the scrape/probe token

``/api/ready`` needs a credential. Kubernetes httpGet probes can only send literal headers,
so they cannot take the token from a Secret; this exec probe reads ``DOCTORAI_METRICS_TOKEN``
from the container's environment (which the Secret fills) and sends it as a bearer token.
It probes ``http://127.0.0.1:$DOCTORAI_PORT`` (7860 unless set).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PATHS = {"health": "/api/health", "ready": "/api/ready"}


def probe(kind: str, base_url: str, token: str | None, timeout_s: float = 4.0) -> tuple[bool, str]:
    """GET the probe's path; ``(ok, reason)``. Only a 200 is healthy (``/api/ready`` is 503 while
    preloading)."""
    request = urllib.request.Request(base_url.rstrip("/") + PATHS[kind])  # noqa: S310 - http(s) URL we build
    if kind == "ready":
        if not token:
            return False, "DOCTORAI_METRICS_TOKEN is not set: /api/ready needs it"
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"unreachable: {exc}"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PATHS:
        sys.stderr.write(f"usage: probe.py {{{'|'.join(PATHS)}}}\n")
        return 2
    port = os.environ.get("DOCTORAI_PORT", "7860")
    ok, reason = probe(argv[0], f"http://127.0.0.1:{port}", os.environ.get("DOCTORAI_METRICS_TOKEN"))
    if not ok:
        sys.stderr.write(f"{argv[0]} probe failed: {reason}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
