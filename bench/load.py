"""Load and overload the HTTP service on loopback; print one JSON object; exit 1 if a check fails.

    python bench/load.py load                 # 64 clients, 2,000 requests, zero errors expected
    python bench/load.py overload             # queue of 8, bursts of 80: the excess gets 503
    python bench/load.py load --url http://127.0.0.1:8000 --model demo   # a running server

Without `--url` it starts `rnnlm serve` on a free loopback port with a 1-layer,
256-unit char LSTM of random weights whose <eos> is suppressed, so every sample
runs to `--max-tokens` and can be checked exactly; it stops the server at the
end. With `--url` the server must be on loopback (127.0.0.0/8, ::1, localhost);
for `overload` it must have been started with `RNNLM_MAX_QUEUE=--queue`.

load: `--clients` concurrent clients send `--requests` requests in all, back to
back (three in four /sample, one in four /score of 4 texts), and every answer is
checked: status 200, the right number of samples and results, num_tokens within
max_tokens, usage adding up. Prints throughput and p50/p99/max latency.

overload: `--bursts` bursts of 10 x `--queue` simultaneous /sample requests
(each on its own connection). Every answer must be a correct 200 or a 503 with
`Retry-After` and code `queue_full`; afterwards the server must be healthy with
an empty queue and nothing running. Prints the counts, latencies and the
server's resident memory (RSS) before and after each burst.

Both stop by themselves: a fixed amount of work, and `--deadline` seconds at most.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import make_untrained  # noqa: E402

TEXTS = ["the cat sat on the mat.", "a bird sang.", "hello world!", "the dog, the log."]


# ------------------------------------------------------------------ the server


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes] | None = None
    root: Path | None = None

    def rss_mib(self) -> float | None:
        if self.proc is None:
            return None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"load.py: {url}: only a loopback address is allowed (127.0.0.1, ::1)")


def start_server(env: dict[str, str], threads: int) -> Server:
    root = Path(tempfile.mkdtemp(prefix="rnnlm-load-"))
    make_untrained(root / "bench")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    full = {**os.environ, "RNNLM_TORCH_THREADS": str(threads), "RNNLM_LOG_LEVEL": "warning",
            "OMP_NUM_THREADS": str(threads), "RNNLM_MAX_TOKENS": "100000", **env}  # fmt: skip
    exe = Path(sys.executable).parent / "rnnlm"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rnnlm.cli"]
    proc = subprocess.Popen(
        [*cmd, "serve", "--models", str(root), "--host", "127.0.0.1", "--port", str(port)],
        env=full,
    )
    server = Server(f"http://127.0.0.1:{port}", proc, root)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load.py: the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{server.base}/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise SystemExit("load.py: the server was not ready in 120 s")


# -------------------------------------------------------------------- checking


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))], 4)


def _latency(xs: list[float]) -> dict[str, float | None]:
    return {"p50_s": _pct(xs, 0.5), "p99_s": _pct(xs, 0.99), "max_s": _pct(xs, 1.0)}


def check_sample(r: httpx.Response, max_tokens: int, exact: bool) -> str | None:
    """None if `r` is a correct /sample answer, else what is wrong."""
    if r.status_code != 200:
        return f"/sample: {r.status_code} {r.text[:200]}"
    body = r.json()
    (s,) = body["samples"]
    if not 0 < s["num_tokens"] <= max_tokens or (exact and s["num_tokens"] != max_tokens):
        return f"/sample: {s['num_tokens']} tokens for max_tokens {max_tokens}"
    if exact and s["finish_reason"] != "length":
        return f"/sample: finish_reason {s['finish_reason']}"
    if body["usage"]["completion_tokens"] != s["num_tokens"]:
        return "/sample: usage does not add up"
    return None


def check_score(r: httpx.Response, n: int) -> str | None:
    if r.status_code != 200:
        return f"/score: {r.status_code} {r.text[:200]}"
    results = r.json()["results"]
    if len(results) != n or not all(x["num_tokens"] > 0 and x["logprob"] < 0 for x in results):
        return "/score: wrong results"
    return None


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "ReadTimeout", ...
    failed: int = 0  # answers that were not what they must be
    errors: list[str] = field(default_factory=list)
    tokens: int = 0

    def fail(self, what: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(what)
        self.failed += 1


# ------------------------------------------------------------------------ load


async def load(args: argparse.Namespace, server: Server, exact: bool) -> dict[str, Any]:
    tally, next_i = Tally(), 0
    model = {"model": args.model} if args.model else {}

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < args.requests:
            i, next_i = next_i, next_i + 1
            t0 = time.perf_counter()
            try:
                if i % 4 == 3:
                    r = await c.post("/score", json={**model, "texts": TEXTS})
                    problem = check_score(r, len(TEXTS))
                else:
                    req = {**model, "max_tokens": args.max_tokens, "seed": i}
                    r = await c.post("/sample", json=req)
                    problem = check_sample(r, args.max_tokens, exact)
                    if problem is None:
                        tally.tokens += r.json()["usage"]["completion_tokens"]
            except httpx.HTTPError as e:
                tally.statuses[type(e).__name__] += 1
                tally.fail(f"{type(e).__name__}: {e}")
                continue
            tally.latencies.append(time.perf_counter() - t0)
            tally.statuses[str(r.status_code)] += 1
            if problem:
                tally.fail(problem)

    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=server.base, timeout=120, limits=limits) as c:
        await c.post("/sample", json={**model, "max_tokens": 4})  # warm up
        rss_before = server.rss_mib()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(args.clients)))
        wall = time.perf_counter() - t0
        healthy = (await c.get("/health")).status_code == 200
    done = len(tally.latencies)
    return {
        "bench": "load", "clients": args.clients, "requests": args.requests,
        "completed": done, "errors": tally.failed, "statuses": dict(sorted(tally.statuses.items())),
        "first_errors": tally.errors, "seconds": round(wall, 2),
        "requests_per_s": round(done / wall, 1),
        "tokens_generated_per_s": round(tally.tokens / wall, 1),
        "max_tokens": args.max_tokens, "latency": _latency(tally.latencies),
        "rss_mib_before": rss_before, "rss_mib_after": server.rss_mib(), "healthy_after": healthy,
    }  # fmt: skip


# -------------------------------------------------------------------- overload


async def _gauge(c: httpx.AsyncClient, name: str) -> float:
    total = 0.0
    for line in (await c.get("/metrics")).text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.split()[-1])
    return total


async def overload(args: argparse.Namespace, server: Server, exact: bool) -> dict[str, Any]:
    burst = 10 * args.queue
    model = {"model": args.model} if args.model else {}
    bursts: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=burst + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base, timeout=120, limits=limits) as c:
        await c.post("/sample", json={**model, "max_tokens": 4})  # warm up
        rss_start = server.rss_mib()

        async def one(i: int, tally: Tally, refused: list[float], admitted: list[float]) -> None:
            t0 = time.perf_counter()
            try:
                r = await c.post(
                    "/sample", json={**model, "max_tokens": args.max_tokens, "seed": i}
                )
            except httpx.HTTPError as e:
                tally.statuses[type(e).__name__] += 1
                tally.fail(f"{type(e).__name__}: {e}")
                return
            dt = time.perf_counter() - t0
            tally.statuses[str(r.status_code)] += 1
            if r.status_code == 503:
                refused.append(dt)
                code = r.json().get("error", {}).get("code")
                if "retry-after" not in r.headers or code != "queue_full":
                    tally.fail(f"503 without Retry-After or code queue_full: {r.text[:200]}")
            else:
                admitted.append(dt)
                if problem := check_sample(r, args.max_tokens, exact):
                    tally.fail(problem)

        for b in range(args.bursts):
            tally, refused, admitted = Tally(), list[float](), list[float]()
            t0 = time.perf_counter()
            await asyncio.gather(*(one(b * burst + i, tally, refused, admitted)
                                   for i in range(burst)))  # fmt: skip
            bursts.append({
                "burst": b + 1, "requests": burst, "admitted_200": len(admitted),
                "refused_503": len(refused), "statuses": dict(sorted(tally.statuses.items())),
                "wrong": tally.failed, "first_errors": tally.errors,
                "seconds": round(time.perf_counter() - t0, 2),
                "latency_admitted": _latency(admitted), "latency_refused": _latency(refused),
                "rss_mib_after": server.rss_mib(),
            })  # fmt: skip
        deadline = time.monotonic() + 10
        waiting = running = -1.0
        while time.monotonic() < deadline:
            waiting = await _gauge(c, "rnnlm_queue_depth")
            running = await _gauge(c, "rnnlm_running_sequences")
            if waiting == 0 and running == 0:
                break
            await asyncio.sleep(0.1)
        after = {
            "health": (await c.get("/health")).status_code,
            "ready": (await c.get("/ready")).status_code,
            "queue_depth": waiting, "running": running,
            "sample": check_sample(
                await c.post("/sample", json={**model, "max_tokens": 8}), 8, exact
            ) or "ok",
        }  # fmt: skip
    rss = [x["rss_mib_after"] for x in bursts]
    ok = all(
        x["wrong"] == 0 and x["refused_503"] > 0 and x["admitted_200"] > 0 for x in bursts
    ) and after == {"health": 200, "ready": 200, "queue_depth": 0, "running": 0, "sample": "ok"}
    return {
        "bench": "overload", "queue": args.queue, "max_batch": args.max_batch,
        "burst_size": burst, "max_tokens": args.max_tokens, "bursts": bursts,
        "rss_mib_before": rss_start,
        "rss_mib_growth_after_first_burst": (
            round(rss[-1] - rss[0], 1) if rss and rss[0] is not None else None
        ),
        "after": after, "ok": ok,
    }  # fmt: skip


# ------------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("mode", choices=["load", "overload"])
    p.add_argument("--url", help="a running server on loopback (default: start one)")
    p.add_argument("--model", help="model to ask for (default: the server's default)")
    p.add_argument("--clients", type=int, default=64, help="load: concurrent clients")
    p.add_argument("--requests", type=int, default=2000, help="load: requests in all")
    p.add_argument(
        "--max-tokens", type=int, default=None, help="per /sample (load 32, overload 64)"
    )
    p.add_argument("--queue", type=int, default=8, help="overload: the server's RNNLM_MAX_QUEUE")
    p.add_argument(
        "--max-batch", type=int, default=8, help="overload: RNNLM_MAX_BATCH (started server)"
    )
    p.add_argument("--bursts", type=int, default=5, help="overload: bursts of 10 x queue")
    p.add_argument("--threads", type=int, default=1, help="server torch threads (started server)")
    p.add_argument("--deadline", type=float, default=600, help="stop after this many seconds")
    args = p.parse_args()
    args.max_tokens = args.max_tokens or (32 if args.mode == "load" else 64)
    if args.url:
        _loopback(args.url)
        server, exact = Server(args.url.rstrip("/")), False
    else:
        env = {}
        if args.mode == "overload":
            env = {"RNNLM_MAX_QUEUE": str(args.queue), "RNNLM_MAX_BATCH": str(args.max_batch),
                   "RNNLM_MAX_N": str(min(16, args.max_batch))}  # fmt: skip
        else:
            env = {"RNNLM_MAX_QUEUE": str(max(256, 2 * args.clients))}
        server, exact = start_server(env, args.threads), True
    run = load if args.mode == "load" else overload
    try:
        out = asyncio.run(asyncio.wait_for(run(args, server, exact), args.deadline))
    except TimeoutError:
        out = {"bench": args.mode, "error": f"not done in --deadline {args.deadline} s"}
    finally:
        server.stop()
    out["cpus"] = os.cpu_count()
    print(json.dumps(out, indent=2))
    if args.mode == "load":
        return 0 if out.get("errors") == 0 and out.get("healthy_after") else 1
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
