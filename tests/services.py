"""Real Redis, PostgreSQL and Prometheus servers for the scale-out tests, started from the
Debian packages (``.ci/run`` installs ``redis-server``, ``postgresql`` and ``prometheus``) on
loopback ports in a temp dir, and stopped afterwards. Nothing is mocked; a test that needs a
server the machine lacks is skipped with the package name."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until_up


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.3)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class RedisServer:
    """``redis-server`` without persistence; :meth:`stop`/:meth:`start` simulate an outage."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    """A throw-away PostgreSQL cluster (initdb in a temp dir, trust auth on loopback). As root,
    the server runs as the ``postgres`` user, which the Debian package creates."""

    def __init__(self) -> None:
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries are not installed (Debian package postgresql)")
        import tempfile

        # Not under pytest's tmp dir: that is private to root (0700) and the server runs as postgres.
        workdir = Path(tempfile.mkdtemp(prefix="doctorai-pg-"))
        self.bindir = bindir
        self.port = free_port()
        self.datadir = workdir / "pgdata"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root needs runuser to start PostgreSQL as the postgres user")
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(workdir, "postgres")
            workdir.chmod(0o755)
        subprocess.run(
            [
                *self._as,
                str(bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "doctorai",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://doctorai@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        log = (self.workdir / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                *self._as,
                str(self.bindir / "postgres"),
                "-D",
                str(self.datadir),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.workdir}",
                "-c",
                "fsync=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_port(self.port)
        time.sleep(0.5)  # accepting TCP before the startup is complete answers "starting up"

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def prometheus_server(workdir: Path, targets: list[str], bearer: str) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` (host:port) every second with a bearer token."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; .ci/run installs it)")
    port = free_port()
    token_file = workdir / "scrape-token"
    token_file.write_text(bearer)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: doctorai\n    metrics_path: /metrics\n"
        f"    authorization:\n      credentials_file: {token_file}\n"
        f"    static_configs:\n      - targets: [{', '.join(repr(t) for t in targets)}]\n"
    )
    log = (workdir / "prometheus.log").open("ab")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/-/ready", proc, workdir / "prometheus.log", 60, "prometheus")
        yield url
    finally:
        _stop(proc)
