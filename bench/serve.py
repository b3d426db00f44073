"""Serving benchmark: the real gunicorn service on loopback under bounded closed-loop load.

1. Naive configuration (no batching, fp32: what the original did) vs the shipped one (micro-batching, precision
   measured at warm-up), same bundle, same machine, same run; concurrency 1 / 4 / 8; every request a new
   seed, so each one is a real generation (no cache hits). Throughput, p50/p95/p99 latency, errors.
2. A load run of 2,000 requests against the shipped configuration: a realistic mix of repeated captions
   (cache hits), new ones (generations) and bad input (4xx). It must show zero 5xx other than deliberate 503s,
   and the worker's memory (RSS) must stay flat.

    python bench/serve.py                    # the paper's bird architecture (random init: same cost as trained)
    python bench/serve.py --bundle models/default   # the small bundled default model
    python bench/serve.py --quick --no-write # a fast look
Bounded: every level stops at its request count or its time limit, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import requests
from _common import ROOT, describe, machine, matmul_peak, md_table, ratio, today, write_section

CAPTIONS = [
    "the bird has a yellow crown and a black eyering that is round",
    "this bird has a red breast, a short black bill and brown wings",
    "a small blue bird with a white belly and a long tail",
    "this bird is grey with a white nape and an orange bill",
    "a brown bird with a white throat and black spots on its breast",
    "this small bird has a green back, a yellow belly and a pointed bill",
]
BAD_BODIES = ['{"caption": ', '{"caption": 42}', '{"caption": ""}', '{"caption": "xyzzy plugh"}',
              '{"caption": "a red bird", "seed": -1}', "[]", '{"caption": "a red\\u0007 bird"}']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_bundle(work: Path) -> tuple[str, str]:
    """The paper's bird architecture (GF_DIM 32, 3 stages): the size a CUB-trained or imported model serves at.
    Weights do not change the cost of a generation, so random init measures it without a trained CUB model."""
    from attngan.bundle import write_random_bundle
    from attngan.model import ModelConfig
    from attngan.text import Vocabulary, tokenize

    vocab = Vocabulary.build(tokenize(c) for c in CAPTIONS)
    path = write_random_bundle(work / "bundle", config=ModelConfig(n_words=len(vocab)), vocab=vocab, seed=0)
    return str(path), "bird architecture (GF_DIM 32, 3 stages) at random init"


class Service:
    def __init__(self, bundle: str, work: Path, name: str, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (work / f"{name}.log").open("wb")
        full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BUCKET_", "PROMETHEUS_"))}
        full.update({"HOST": "127.0.0.1", "PORT": str(self.port), "BUNDLE_DIR": bundle, "LOG_LEVEL": "warning",
                     "IMAGE_DIR": str(work / f"images-{name}"), **env})
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.proc = subprocess.Popen([str(gunicorn), "-c", "service/gunicorn_conf.py", "service.app:create_app()"],
                                     cwd=ROOT, env=full, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: gunicorn ({name}) exited; see {work / (name + '.log')}")
            try:
                r = requests.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    self.ready = r.json()
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"bench: gunicorn ({name}) not ready in 180 s")

    def worker_rss_mb(self) -> float:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        total = 0
        for pid in children:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def closed_loop(url: str, concurrency: int, n: int, limit_s: float, seed0: int) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request when the last one answered; n requests at most."""
    counter = iter(range(n))
    lat: list[float] = []
    codes: Counter[int] = Counter()
    stop_at = time.monotonic() + limit_s
    session_pool = [requests.Session() for _ in range(concurrency)]

    def client(k: int) -> None:
        s = session_pool[k]
        while time.monotonic() < stop_at:
            try:
                i = next(counter)
            except StopIteration:
                return
            body = {"caption": CAPTIONS[i % len(CAPTIONS)], "seed": seed0 + i}
            t0 = time.perf_counter()
            try:
                r = s.post(f"{url}/api/v1.0/bird", json=body, timeout=120)
                codes[r.status_code] += 1
                if r.status_code == 201:
                    lat.append(time.perf_counter() - t0)
            except requests.RequestException:
                codes[0] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    return {"n": sum(codes.values()), "ok": len(lat), "wall": wall, "rps": len(lat) / wall,
            "p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95), "p99": percentile(lat, 0.99),
            "errors": sum(v for c, v in codes.items() if c != 201), "codes": dict(codes)}


def load_run(svc: Service, total: int, concurrency: int, limit_s: float) -> dict[str, Any]:
    """A mix: 75 % repeated (caption, seed) pairs (cache hits), 10 % new seeds, 15 % bad input."""
    rng = random.Random(0)
    plan = []
    for i in range(total):
        roll = rng.random()
        if roll < 0.75:
            plan.append(("hot", {"caption": CAPTIONS[rng.randrange(len(CAPTIONS))], "seed": rng.randrange(4)}))
        elif roll < 0.85:
            plan.append(("new", {"caption": CAPTIONS[i % len(CAPTIONS)], "seed": 10_000 + i}))
        else:
            plan.append(("bad", BAD_BODIES[rng.randrange(len(BAD_BODIES))]))
    codes: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    rss = [(0, svc.worker_rss_mb())]
    lock_next = iter(range(total))
    stop_at = time.monotonic() + limit_s
    done = [0]
    lock = threading.Lock()

    def client(_: int) -> None:
        s = requests.Session()
        while time.monotonic() < stop_at:
            try:
                i = next(lock_next)
            except StopIteration:
                return
            kind, body = plan[i]
            kinds[kind] += 1
            try:
                if kind == "bad":
                    r = s.post(f"{svc.url}/api/v1.0/bird", data=body, headers={"Content-Type": "application/json"},
                               timeout=120)
                else:
                    r = s.post(f"{svc.url}/api/v1.0/bird", json=body, timeout=120)
                codes[r.status_code] += 1
            except requests.RequestException:
                codes[0] += 1
            with lock:
                done[0] += 1
                if done[0] % 500 == 0:
                    rss.append((done[0], svc.worker_rss_mb()))
                    print(f"  load: {done[0]}/{total} requests, worker RSS {rss[-1][1]:.0f} MB", flush=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    if rss[-1][0] != done[0]:
        rss.append((done[0], svc.worker_rss_mb()))
    five = sum(v for c, v in codes.items() if c >= 500 and c != 503)
    return {"total": done[0], "wall": wall, "codes": dict(sorted(codes.items())), "kinds": dict(kinds),
            "unexpected_5xx": five, "rss": rss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="model bundle (default: the paper's bird architecture at random init)")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--seconds", type=float, default=40.0, help="time limit per level and configuration")
    ap.add_argument("--load-requests", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="fewer requests (a look, not a measurement)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    per_level = (lambda c: 4 + 2 * c) if args.quick else (lambda c: 8 + 4 * c)
    seconds = min(args.seconds, 20.0) if args.quick else args.seconds
    load_n = min(args.load_requests, 300) if args.quick else args.load_requests

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="attngan-bench-serve-"))
    bundle, what = (args.bundle, f"bundle {args.bundle}") if args.bundle else default_bundle(work)
    configs = {
        "naive": {"MAX_BATCH_SIZE": "1", "MAX_WAIT_MS": "0", "PRECISION": "fp32"},
        "shipped": {},  # the defaults of service/settings.py
    }
    results: dict[str, dict[int, dict[str, Any]]] = {}
    info: dict[str, Any] = {}
    load: dict[str, Any] = {}
    for name, env in configs.items():
        print(f"bench: starting {name} service ...", flush=True)
        svc = Service(bundle, work, name, env)
        info[name] = svc.ready
        results[name] = {}
        try:
            for i, c in enumerate(levels):
                r = closed_loop(svc.url, c, per_level(c), seconds, seed0=100_000 * (i + 1))
                results[name][c] = r
                print(f"  {name} c={c}: {r['ok']}/{r['n']} ok, {r['rps']:.2f} req/s, p50 {r['p50'] * 1e3:.0f} ms, "
                      f"p95 {r['p95'] * 1e3:.0f} ms, errors {r['errors']}", flush=True)
            if name == "shipped":
                print(f"bench: load run of {load_n} requests ...", flush=True)
                load = load_run(svc, load_n, concurrency=8, limit_s=600 if not args.quick else 120)
        finally:
            svc.stop()

    import torch

    from service.settings import Settings

    shipped = Settings()
    torch.set_num_threads(int(info["shipped"].get("threads") or torch.get_num_threads()))
    device = info["shipped"].get("device") or "cpu"
    m = machine(device)
    rows = []
    for c in levels:
        for name in configs:
            r = results[name][c]
            base = results["naive"][c]
            rows.append([name, c, f"{r['ok']}/{r['n']}", f"{r['rps']:.2f}", f"{r['p50'] * 1e3:.0f}",
                         f"{r['p95'] * 1e3:.0f}", f"{r['p99'] * 1e3:.0f}", r["errors"],
                         ratio(r["rps"], base["rps"]), ratio(base["p50"], r["p50"])])
    table = md_table(["config", "concurrency", "ok/sent", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                      "throughput vs naive", "p50 speed-up vs naive"], rows)
    rss = load["rss"]
    growth = rss[-1][1] - rss[1][1] if len(rss) > 2 else rss[-1][1] - rss[0][1]
    load_text = (
        f"Load run: {load['total']} requests at concurrency 8 in {load['wall']:.0f} s "
        f"({load['total'] / load['wall']:.0f} req/s; mix {json.dumps(load['kinds'])}), "
        f"status codes {json.dumps(load['codes'])}: **{load['unexpected_5xx']} unexpected 5xx**. "
        f"Worker RSS (MB) by requests served: "
        + ", ".join(f"{n}: {mb:.0f}" for n, mb in rss)
        + f"; growth after the first 500: {growth:+.1f} MB."
    )
    # against the hardware's limit: FLOPs of one generation (text encoder + generator) x the best images/s
    from torch.utils.flop_counter import FlopCounterMode

    from attngan.pipeline import TextToImage

    model = TextToImage.from_bundle(bundle, device="cpu" if device == "cpu" else device, precision="fp32")
    with FlopCounterMode(display=False) as counter:
        model.generate([model.prepare(CAPTIONS[0])], [1])
    flops = counter.get_total_flops()
    best = max(results["shipped"][c]["rps"] for c in levels)
    peak_dtype = "bf16" if info["shipped"].get("precision") == "bf16" else "fp32"
    peak = matmul_peak(device, peak_dtype)
    limit_text = (f"Against the hardware: {flops / 1e9:.2f} GFLOP per request (one caption to three images) x "
                  f"{best:.2f} req/s (shipped, best level) = {flops * best / 1e12:.3f} TFLOP/s, "
                  f"{100 * flops * best / peak:.1f}% of the {peak / 1e12:.2f} TFLOP/s {peak_dtype} matmul peak "
                  f"measured in the same run (the gap: convolutions and small ops run below matmul peak, plus PNG encoding, attention-map rendering and HTTP per request).")
    body = "\n\n".join([
        (f"`python bench/serve.py` ({today()}). {describe(m)}. Model: {what}. "
         f"Real gunicorn (1 worker, gthread) on 127.0.0.1; closed-loop clients; every request a new seed (no cache "
         f"hits); each level stops at {'4 + 2' if args.quick else '8 + 4'} x concurrency requests or "
         f"{seconds:.0f} s. Load average before the run: {load_before:.1f} (other work on the machine slows "
         f"both configurations alike; compare the ratios)."),
        (f"naive = MAX_BATCH_SIZE 1, fp32 (the original's way). shipped = the defaults: MAX_BATCH_SIZE "
         f"{shipped.max_batch_size}, MAX_WAIT_MS {shipped.max_wait_ms:g}, precision measured at warm-up "
         f"(chose **{info['shipped'].get('precision')}** on {device})."),
        table,
        limit_text,
        load_text,
    ])
    print("\n" + table + "\n\n" + load_text)
    if not args.no_write:
        print(f"bench: wrote {write_section('Serving', body)}")
    return 1 if load["unexpected_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
