"""DoctorAI under load, against its own raw model cost and a naive Spaces-style app.

One run prints every figure as a ratio to the raw fused forward+Grad-CAM time measured in
the same run (this 2-core machine is noisy; only same-run ratios compare):

* REST end-to-end p50/p95 (explain=true, cache misses), gradio_client p50/p95, cache hit p50;
* throughput at 1, 2, 4, 8, 16 concurrent clients, batching on and off;
* cold start: process start -> /api/health, -> /api/ready (preloaded), first analysis;
* decode cost for a 512 px JPEG, a 4096 px JPEG and a DICOM;
* the naive baseline (gr.Interface + model.predict + eager GradientTape) on the same images;
* with --real-models: RSS with every installed model of assets/models.yaml loaded.

    python bench/bench_load.py [--size 224] [--real-models] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    PROBE_TOKEN,
    REPO,
    auth_headers,
    build_densenet,
    pct,
    rss_mb,
    start_doctorai,
    stop,
    timed,
    wait_http,
    write_registry,
)

log = logging.getLogger("bench")
LEVELS = (1, 2, 4, 8, 16)


def png(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def jpeg(side: int) -> bytes:
    rng = np.random.default_rng(side)
    small = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


async def throughput(url: str, clients: int, per_client: int, size: int, seed0: int) -> tuple[float, float]:
    """Images per second with ``clients`` concurrent clients, each sending ``per_client``
    distinct images one after another (bounded: clients * per_client requests in all), and
    the mean batch size the server reported for those requests."""
    import httpx

    sizes: list[float] = []

    async with httpx.AsyncClient(
        timeout=300, limits=httpx.Limits(max_connections=clients), headers=auth_headers(url)
    ) as client:

        async def one(c: int) -> None:
            for k in range(per_client):
                data = png(seed0 + c * 1000 + k, size)
                r = await client.post(
                    f"{url}/api/predict/bench", files={"file": ("x.png", data)}, params={"explain": "true"}
                )
                r.raise_for_status()
                sizes.append(float(r.json().get("timing_breakdown_ms", {}).get("batch_size", 1.0)))

        t = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(clients)))
        return clients * per_client / (time.perf_counter() - t), float(np.mean(sizes))


def rest_latencies(url: str, images: list[bytes], stages: dict[str, list[float]] | None = None) -> list[float]:
    """Client-side wall time per request; ``stages`` collects the server's own breakdown
    (``timing_breakdown_ms``: decode, preprocess, forward, ...) for the report."""
    import httpx

    out = []
    with httpx.Client(timeout=300, headers=auth_headers(url)) as client:
        for data in images:
            t = time.perf_counter()
            r = client.post(f"{url}/api/predict/bench", files={"file": ("x.png", data)}, params={"explain": "true"})
            r.raise_for_status()
            out.append((time.perf_counter() - t) * 1e3)
            if stages is not None:
                for k, v in r.json().get("timing_breakdown_ms", {}).items():
                    stages.setdefault(k, []).append(float(v))
    return out


def gradio_latencies(url: str, paths: list[Path], api_name: str, extra: tuple[Any, ...]) -> list[float]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, headers=auth_headers(url))
    out = []
    for p in paths:
        t = time.perf_counter()
        client.predict(handle_file(str(p)), *extra, api_name=api_name)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def gradio_http_latencies(url: str, paths: list[Path], api_name: str, extra: tuple[Any, ...]) -> list[float]:
    """The Gradio path without gradio_client's own polling (it sleeps 50 ms per loop):
    upload, POST /gradio_api/call/<api>, read the SSE result, fetch the output image."""
    import httpx

    out = []
    with httpx.Client(timeout=300, headers=auth_headers(url)) as client:
        for p in paths:
            t = time.perf_counter()
            up = client.post(f"{url}/gradio_api/upload", files={"files": (p.name, p.read_bytes())})
            up.raise_for_status()
            arg = {"path": up.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": p.name}
            r = client.post(f"{url}/gradio_api/call/{api_name}", json={"data": [arg, *extra]})
            r.raise_for_status()
            result = ""
            with client.stream("GET", f"{url}/gradio_api/call/{api_name}/{r.json()['event_id']}") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        result = line[5:]
            data = json.loads(result)
            image = next(d for d in data if isinstance(d, dict) and d.get("url"))
            client.get(image["url"]).raise_for_status()
            out.append((time.perf_counter() - t) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--port", type=int, default=7401)
    ap.add_argument("--real-models", action="store_true", help="also measure RSS with all installed models loaded")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--batch-max-size", type=int, help="DOCTORAI_BATCH_MAX_SIZE of the batching server")
    ap.add_argument("--only-throughput", action="store_true", help="only the throughput table (and raw costs)")
    ap.add_argument("--rss-only", action="store_true", help="with --real-models: only the RSS of the real models")
    ap.add_argument(
        "--kb-source", type=Path, help="with --real-models: the chat corpus (its index is built if missing)"
    )
    ap.add_argument("--kb-dir", type=Path, help="with --real-models: an already built index folder")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # child mode, see prepare()
    ap.add_argument("--remeasure", type=Path, help=argparse.SUPPRESS)  # child mode, see remeasure()
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.prepare:
        prepare(args.prepare, args.size, args.repeats)
        return
    if args.remeasure:
        remeasure(args.remeasure, args.repeats)
        return

    work = Path(tempfile.mkdtemp(prefix="doctorai-load-"))
    if args.rss_only:
        res_rss: dict[str, Any] = {}
        measure_real_models(args, work, res_rss)
        print(f"RSS with {res_rss['real_models_loaded']}: {res_rss['rss_all_real_models_mb']:.0f} MB")
        if args.json:
            args.json.write_text(json.dumps(res_rss, indent=2))
        return
    model_dir = work / "models"
    registry = work / "models.yaml"
    # The model is built and its raw cost measured in a child process: TensorFlow's idle
    # worker threads left in the load generator's own process would slow every request.
    cmd = [sys.executable, __file__, "--prepare", str(work), "--size", str(args.size), "--repeats", str(args.repeats)]
    subprocess.run(cmd, check=True)
    res: dict[str, Any] = json.loads((work / "raw.json").read_text())
    serve_and_measure(args, work, model_dir, registry, res)
    report(res, args.size)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def prepare(work: Path, size: int, n: int) -> None:
    """Child process: build the model, measure the raw fused cost and decode costs."""
    from inference.imaging import decode_image

    model_dir = work / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    log.info("building DenseNet201-size model in %s", work)
    build_densenet(size, model_dir / "bench.keras")
    registry = work / "models.yaml"
    write_registry(registry, size)
    res: dict[str, Any] = {}
    backend = _raw_backend(work)
    x = backend.preprocess([np.zeros((size, size, 3), np.uint8)])
    res["raw_fused_ms"] = pct(timed(lambda: backend.explainer.forward_explain(x), n), 50)
    res["raw_forward_ms"] = pct(timed(lambda: backend.explainer.forward(x), n), 50)
    x8 = np.repeat(x, 8, axis=0)
    res["fused_batch8_per_image_ms"] = pct(timed(lambda: backend.explainer.forward_explain(x8), max(3, n // 3)), 50) / 8
    from pydicom.data import get_testdata_file

    dcm = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    decode_cases = (("decode_jpeg_512_ms", jpeg(512)), ("decode_jpeg_4096_ms", jpeg(4096)), ("decode_dicom_ms", dcm))
    for name, data in decode_cases:
        res[name] = pct(timed(lambda d=data: decode_image(d, max_pixels=50_000_000), 10), 50)  # type: ignore[misc]
    (work / "raw.json").write_text(json.dumps(res))


def _raw_backend(work: Path) -> Any:
    from inference.backends.keras_image import KerasImageBackend, load_keras_model
    from inference.registry import Registry

    backend = KerasImageBackend(
        Registry.from_yaml(work / "models.yaml")["bench"], load_keras_model(work / "models" / "bench.keras"), "cpu"
    )
    backend.warm_up()
    return backend


def remeasure(work: Path, n: int) -> None:
    """Child process: the raw fused time again, right after the REST latencies were taken.

    This machine's speed drifts over minutes (other tenants), so the REST ratio uses the mean
    of the raw time measured before the server started and this one."""
    backend = _raw_backend(work)
    size = backend.spec.input.size
    x = backend.preprocess([np.zeros((size, size, 3), np.uint8)])
    (work / "raw_after.json").write_text(
        json.dumps({"raw_fused_ms_after": pct(timed(lambda: backend.explainer.forward_explain(x), n), 50)})
    )


def serve_and_measure(
    args: argparse.Namespace, work: Path, model_dir: Path, registry: Path, res: dict[str, Any]
) -> None:
    """The servers and the clients; this process never imports TensorFlow."""
    n = args.repeats
    # --- DoctorAI, batching on: cold start, latency, cache, gradio_client, throughput
    port_on = args.port
    t0 = time.perf_counter()
    batch_env = {"DOCTORAI_BATCHING": "true"}  # the default is off on CPU: this server measures "on"
    if args.batch_max_size:
        batch_env["DOCTORAI_BATCH_MAX_SIZE"] = str(args.batch_max_size)
    proc = start_doctorai(work, model_dir, registry, port_on, DOCTORAI_PRELOAD="bench", **batch_env)
    url = f"http://127.0.0.1:{port_on}"
    try:
        wait_http(url + "/api/health", 120)
        res["cold_health_s"] = time.perf_counter() - t0
        wait_http(url + "/api/ready", 600)
        res["cold_ready_s"] = time.perf_counter() - t0
        if not args.only_throughput:
            first_stages: dict[str, list[float]] = {}
            first = rest_latencies(url, [png(10_000, args.size)], first_stages)[0]
            res["first_analysis_server_stages_ms"] = {k: v[0] for k, v in first_stages.items()}
            stages: dict[str, list[float]] = {}
            warm = rest_latencies(url, [png(10_001 + i, args.size) for i in range(n)], stages)
            res["rest_server_stages_p50_ms"] = {k: pct(v, 50) for k, v in stages.items()}
            res["first_analysis_ms"] = first
            res["rest_p50_ms"], res["rest_p95_ms"] = pct(warm, 50), pct(warm, 95)
            # the server idles meanwhile; the raw cost again, in the same minutes as the REST figures
            cmd = [sys.executable, __file__, "--remeasure", str(work), "--repeats", str(args.repeats)]
            subprocess.run(cmd, check=True)
            res.update(json.loads((work / "raw_after.json").read_text()))
            hit_img = png(10_001, args.size)
            hits = rest_latencies(url, [hit_img] * n)
            res["cache_hit_p50_ms"] = pct(hits, 50)
            paths = []
            for i in range(n):
                p = work / f"g{i}.png"
                p.write_bytes(png(20_000 + i, args.size))
                paths.append(p)
            g = gradio_latencies(url, paths, "/predict_bench", (0.45, True))
            res["gradio_p50_ms"], res["gradio_p95_ms"] = pct(g, 50), pct(g, 95)
            fresh = []
            for i in range(n):  # new images: the ones above are cache hits by now
                p = work / f"h{i}.png"
                p.write_bytes(png(25_000 + i, args.size))
                fresh.append(p)
            gh = gradio_http_latencies(url, fresh, "predict_bench", (0.45, True))
            res["gradio_http_p50_ms"], res["gradio_http_p95_ms"] = pct(gh, 50), pct(gh, 95)
        runs_on = {c: asyncio.run(throughput(url, c, max(3, 48 // c), args.size, 30_000 + c * 100_000)) for c in LEVELS}
        res["throughput_batching_on"] = {c: r[0] for c, r in runs_on.items()}
        res["mean_batch_size_on"] = {c: r[1] for c, r in runs_on.items()}
        res["rss_server_mb_one_model"] = rss_mb(proc.pid)
    finally:
        stop(proc)

    # --- DoctorAI, batching off
    proc = start_doctorai(work, model_dir, registry, port_on + 1, DOCTORAI_PRELOAD="bench", DOCTORAI_BATCHING="false")
    url_off = f"http://127.0.0.1:{port_on + 1}"
    try:
        wait_http(url_off + "/api/ready", 600)
        rest_latencies(url_off, [png(1, args.size)])
        res["throughput_batching_off"] = {  # no batch size to report: every forward is batch 1
            c: asyncio.run(throughput(url_off, c, max(3, 48 // c), args.size, 40_000 + c * 100_000))[0] for c in LEVELS
        }
    finally:
        stop(proc)

    # --- naive baseline
    if not (args.skip_naive or args.only_throughput):
        naive_port = port_on + 2
        naive = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "naive_app.py"), str(model_dir / "bench.keras"), str(naive_port)],
            stdout=(work / "naive.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{naive_port}/", 600)
            nv = gradio_latencies(f"http://127.0.0.1:{naive_port}", paths[: max(5, n // 2)], "/predict", ())
            res["naive_p50_ms"], res["naive_p95_ms"] = pct(nv, 50), pct(nv, 95)
        finally:
            stop(naive)

    if args.real_models:
        measure_real_models(args, work, res)


def measure_real_models(args: argparse.Namespace, work: Path, res: dict[str, Any]) -> None:
    """RSS of a server with every installed real model (and the chat index) preloaded."""
    from inference.registry import Registry as Reg

    port = args.port + 3
    ids = ",".join(s.id for s in Reg.from_yaml(REPO / "assets" / "models.yaml"))
    kb_env = {"DOCTORAI_KB_SOURCE": str(args.kb_source)} if args.kb_source else {}
    if args.kb_dir:
        kb_env["DOCTORAI_KB_DIR"] = str(args.kb_dir)
    proc = start_doctorai(work, REPO / "assets" / "models", None, port, DOCTORAI_PRELOAD=ids, **kb_env)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/ready", 900)
        import httpx

        states = httpx.get(
            f"http://127.0.0.1:{port}/api/ready", headers={"Authorization": f"Bearer {PROBE_TOKEN}"}
        ).json()["models"]
        res["real_models_loaded"] = [m for m, s in states.items() if s["state"] == "ready"]
        res["rss_all_real_models_mb"] = rss_mb(proc.pid)
    finally:
        stop(proc)


def report(res: dict[str, Any], size: int) -> None:
    # the mean of the raw fused time before the servers ran and right after the REST latencies
    base = (res["raw_fused_ms"] + res.get("raw_fused_ms_after", res["raw_fused_ms"])) / 2
    rows: list[tuple[str, str, str]] = [("raw fused forward+Grad-CAM, batch 1 (p50)", f"{base:.1f} ms", "1.00")]
    if "raw_fused_ms_after" in res:
        rows.append(("  of which: before the servers", f"{res['raw_fused_ms']:.1f} ms", ""))
        rows.append(("  of which: after the REST latencies", f"{res['raw_fused_ms_after']:.1f} ms", ""))

    def add(label: str, key: str) -> None:
        if key in res:
            rows.append((label, f"{res[key]:.1f} ms", f"{res[key] / base:.2f}"))

    add("raw compiled forward only, batch 1", "raw_forward_ms")
    add("fused, batch 8, per image", "fused_batch8_per_image_ms")
    add("REST end-to-end p50", "rest_p50_ms")
    add("REST end-to-end p95", "rest_p95_ms")
    add("gradio_client p50", "gradio_p50_ms")
    add("gradio_client p95", "gradio_p95_ms")
    add("Gradio HTTP API (no gradio_client) p50", "gradio_http_p50_ms")
    add("Gradio HTTP API (no gradio_client) p95", "gradio_http_p95_ms")
    add("cache hit p50", "cache_hit_p50_ms")
    add("first analysis after preload", "first_analysis_ms")
    add("naive Spaces app p50", "naive_p50_ms")
    add("naive Spaces app p95", "naive_p95_ms")
    add("decode 512 px JPEG", "decode_jpeg_512_ms")
    add("decode 4096 px JPEG", "decode_jpeg_4096_ms")
    add("decode DICOM (CT_small)", "decode_dicom_ms")
    print(f"\nDoctorAI load benchmark: DenseNet201-size model, {size} px, CPU x{os.cpu_count()}")
    print(f"{'measurement':45s} {'value':>12s} {'x raw fused':>12s}")
    for label, value, ratio in rows:
        print(f"{label:45s} {value:>12s} {ratio:>12s}")
    if "first_analysis_server_stages_ms" in res:
        print(
            "first analysis, inside the server (ms): "
            + ", ".join(f"{k} {v:.1f}" for k, v in res["first_analysis_server_stages_ms"].items() if k != "batch_size")
        )
    if "rest_server_stages_p50_ms" in res:
        print(
            "\nREST, inside the server (p50 ms): "
            + ", ".join(f"{k} {v:.1f}" for k, v in res["rest_server_stages_p50_ms"].items() if k != "batch_size")
        )
    print(f"\n{'clients':>8s} {'img/s batching on':>18s} {'img/s off':>10s} {'on/off':>7s} {'mean batch (on)':>16s}")
    for c in LEVELS:
        on, off = res["throughput_batching_on"][c], res["throughput_batching_off"][c]
        mean_batch = res.get("mean_batch_size_on", {}).get(c, float("nan"))
        print(f"{c:8d} {on:18.2f} {off:10.2f} {on / off:7.2f} {mean_batch:16.2f}")
    if "fused_batch8_per_image_ms" in res:
        # What batching can buy at most on this CPU: the model's own batch-1 cost over its
        # per-image cost in a batch of 8 (requests, HTTP and decoding excluded).
        ceiling = base / res["fused_batch8_per_image_ms"]
        achieved = res["throughput_batching_on"][8] / res["throughput_batching_off"][8]
        print(
            f"batching ceiling (raw fused batch 1 / batch 8 per image): {ceiling:.2f}x; "
            f"at 8 clients on/off {achieved:.2f}x"
        )
    if "first_analysis_ms" not in res:  # --only-throughput
        return
    print(f"\ncold start: /api/health {res['cold_health_s']:.1f} s, /api/ready (preloaded) {res['cold_ready_s']:.1f} s")
    if "naive_p50_ms" in res:
        print(f"naive / DoctorAI REST p50: {res['naive_p50_ms'] / res['rest_p50_ms']:.1f}x")
    print(f"RSS, one DenseNet-size model loaded: {res['rss_server_mb_one_model']:.0f} MB")
    if "rss_all_real_models_mb" in res:
        print(f"RSS with {res['real_models_loaded']}: {res['rss_all_real_models_mb']:.0f} MB")


if __name__ == "__main__":
    main()
