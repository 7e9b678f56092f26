"""The real server under abuse: overload bursts, a 50 MB body, SIGTERM with requests in
flight, and the bench/load.py script itself on a small scale (its long run is in
docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.app.conftest import make_endless
from tests.e2e.live import Live, live_server

QUEUE, BATCH = 4, 4
MIB = 1 << 20
ENDLESS = 10**9  # tokens: no engine samples that many in any test's lifetime


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("abuse")
    shutil.copytree(models_dir / "char", root / "char")
    make_endless(root / "endless")
    return root


@pytest.fixture(scope="module")
def small_queue(models: Path) -> Iterator[Live]:
    """A server that holds at most BATCH running and QUEUE waiting requests."""
    env = {"RNNLM_MAX_QUEUE": str(QUEUE), "RNNLM_MAX_BATCH": str(BATCH),
           "RNNLM_MAX_N": str(BATCH)}  # fmt: skip
    with live_server(models, env, default_model="endless") as live:
        yield live


def _metric(base: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.split()[-1])
    return total


async def _burst(base: str, size: int, max_tokens: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
        return await asyncio.gather(
            *(c.post("/sample", json={"max_tokens": max_tokens, "seed": i}) for i in range(size))
        )


def test_a_burst_of_ten_times_the_queue(small_queue: Live) -> None:
    base, rss = small_queue.base, []
    for _ in range(3):
        responses = asyncio.run(_burst(base, 10 * QUEUE, max_tokens=30))
        rss.append(small_queue.rss_kib())
        admitted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 503]
        assert len(admitted) + len(refused) == len(responses), [r.text for r in responses]
        assert len(admitted) >= QUEUE and refused, (len(admitted), len(refused))
        for r in refused:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        for r in admitted:  # every admitted request completes, and correctly
            (s,) = r.json()["samples"]
            assert s["num_tokens"] == 30 and s["finish_reason"] == "length"
    # Memory stays flat: the second and third bursts allocate nothing that stays.
    assert rss[2] - rss[0] < 16 * 1024, rss
    # Healthy afterwards: nothing left waiting or running, and new requests are served.
    deadline = time.monotonic() + 60  # a hang guard
    while _metric(base, "rnnlm_queue_depth") or _metric(base, "rnnlm_running_sequences"):
        assert time.monotonic() < deadline, "the queue did not drain"
        time.sleep(0.05)
    assert httpx.get(f"{base}/ready").status_code == 200
    r = httpx.post(f"{base}/sample", json={"max_tokens": 5}, timeout=30)
    assert r.status_code == 200 and r.json()["samples"][0]["num_tokens"] == 5


def _read_response(s: socket.socket) -> bytes:
    """One HTTP response, headers and body (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536) or b"!"  # "!": the peer closed
        assert not data.endswith(b"!"), data
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, body
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_50_mb_body_is_refused_before_it_is_read(small_queue: Live) -> None:
    host, port = "127.0.0.1", urlsplit(small_queue.base).port
    rss_before = small_queue.rss_kib()
    # Declared: the answer comes at once, while 50 MB are still to be sent.
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (50 * MIB) + b'{"texts": ["' + b"a" * 4096
        )
        head = _read_response(s)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b'"code":"body_too_large"' in head
    # Chunked (no length): read as it arrives, refused past the 1 MiB limit.
    sent, stop = 0, threading.Event()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

        def pump() -> None:
            nonlocal sent
            chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
            try:
                while not stop.is_set() and sent < 50 * MIB:
                    s.sendall(chunk)
                    sent += 64 * 1024
            except OSError:
                pass  # the server answered and closed

        t = threading.Thread(target=pump)
        t.start()
        head = _read_response(s)
        stop.set()
        t.join(10)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert sent < 20 * MIB, sent  # the limit plus what the socket buffers held
    assert small_queue.rss_kib() - rss_before < 20 * 1024
    assert httpx.get(f"{small_queue.base}/health").status_code == 200


def test_bench_load_script_runs_clean(small_queue: Live) -> None:
    script = Path(__file__).resolve().parents[2] / "bench" / "load.py"
    res = subprocess.run(
        [sys.executable, str(script), "load", "--url", small_queue.base, "--clients", str(QUEUE),
         "--requests", "60", "--max-tokens", "8", "--deadline", "120"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["completed"] == 60 and out["errors"] == 0 and out["healthy_after"]
    assert out["latency"]["p50_s"] <= out["latency"]["p99_s"] <= out["latency"]["max_s"]
    far = subprocess.run(
        [sys.executable, str(script), "load", "--url", "http://10.1.2.3:8000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert far.returncode != 0 and "only a loopback address" in far.stderr


def test_sigterm_finishes_or_cancels_in_flight_requests(models: Path) -> None:
    grace = 10
    env = {"RNNLM_MAX_TOKENS": str(ENDLESS), "RNNLM_SHUTDOWN_TIMEOUT_S": str(grace)}
    with live_server(models, env, default_model="endless") as live:
        base = live.base
        plain: dict[str, object] = {}
        size = {"max_tokens": 1000}

        def short_request() -> None:
            try:
                r = httpx.post(f"{base}/sample", json={**size, "seed": 1}, timeout=60)
                plain["status"], plain["body"] = r.status_code, r.json()
            except httpx.HTTPError as e:
                plain["error"] = repr(e)

        stream_end: list[str] = []

        def endless_stream() -> None:
            try:
                with httpx.stream("POST", f"{base}/sample", timeout=60,
                                  json={"max_tokens": ENDLESS, "stream": True}) as r:  # fmt: skip
                    for line in r.iter_lines():
                        if '"type": "done"' in line:
                            stream_end.append("done")
                stream_end.append("closed")
            except httpx.HTTPError as e:
                stream_end.append(type(e).__name__)

        def wait_running(n: int) -> None:
            deadline = time.monotonic() + 60
            while _metric(base, "rnnlm_running_sequences") < n:
                assert time.monotonic() < deadline and "status" not in plain, plain
                time.sleep(0.02)

        threads = [threading.Thread(target=f) for f in (endless_stream, short_request)]
        threads[0].start()
        wait_running(1)
        # The short request is sized to this machine beside the endless stream: about a
        # quarter of the grace period, long enough to be seen in flight however fast the
        # engine is, short enough to finish inside the grace on a busy machine too. (No
        # floor in tokens: on a slow enough machine any floor would outlast the grace.)
        t = time.monotonic()
        assert httpx.post(f"{base}/sample", json=size, timeout=60).status_code == 200
        per_token = (time.monotonic() - t) / size["max_tokens"]
        size["max_tokens"] = max(1, int(grace / 4 / per_token))
        threads[1].start()
        wait_running(2)  # both in the batch
        t0 = time.monotonic()
        live.proc.send_signal(signal.SIGTERM)
        live.proc.wait(grace + 15)
        exited = time.monotonic() - t0
        for t in threads:
            t.join(10)
        log = live.log.read_text()
    # uvicorn re-raises the SIGTERM it handled once shut down, so that is the exit status.
    assert live.proc.returncode in (0, -signal.SIGTERM), log
    assert exited < grace + 10, exited
    # The short request was in flight and finished: all its tokens, a 200.
    assert plain.get("status") == 200, plain
    assert plain["body"]["samples"][0]["num_tokens"] == size["max_tokens"]  # type: ignore[index]
    # The endless stream was cut when the grace period ran out, never finished.
    assert stream_end and "done" not in stream_end, stream_end
    assert "timeout graceful shutdown exceeded" in log, log  # cancelled, not left running
    assert "Traceback" not in log, log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/health", timeout=2)
