"""Benchmark the HTTP service: start `rnnlm serve` on loopback, print one JSON object per line.

    python bench/bench_service.py CHECKPOINT_DIR [--seconds 8] [--max-tokens 128]
                                  [--label NAME] [--gemm-gflops X]
    python bench/bench_service.py --make-untrained /tmp/bench_ckpt   # 1-layer 256-unit char LSTM

Measures single-stream and aggregate sampling tokens/s with 1, 8, 32 and 64
concurrent clients (each client sends /sample requests back to back), /score
sentences/s and tokens/s at batch sizes 1 and 64, and p50/p99 request
latencies. The untrained model has <eos> suppressed so that every sample runs
to max_tokens: random weights are fine for speed.

Memory: the server's resident set (VmRSS in /proc/PID/status) once the model is
loaded and before any request (idle), its maximum sampled every 50 ms under
each load, again idle after the loads, and the kernel's high-water mark VmHWM.

Scoring against the hardware: forward FLOPs per scored token from the layer
sizes (bench/flops.py); with `--gemm-gflops` (the fp32 matmul rate at the
server's thread count, `python bench/speed.py gemm --threads 1`) each score
line also says the GEMM-bound rate, GFLOP/s over FLOPs/token, and the share
of it reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402
from loadgen import Connection  # noqa: E402

SENTENCE = "the quick brown fox jumps over the lazy dog, and the cat sat on the mat to watch."


def make_untrained(directory: Path) -> Path:
    import torch

    from rnnlm.models.checkpoint import save_checkpoint
    from rnnlm.models.model import RNNLM, ModelConfig
    from rnnlm.models.tokenizers import EOS, CharTokenizer

    torch.manual_seed(0)
    tok = CharTokenizer.fit(Counter(SENTENCE + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?;:'\"()-\n"))
    cfg = ModelConfig(vocab_size=tok.vocab_size, cell="lstm", embedding=256, hidden=256, layers=1)
    model = RNNLM(cfg)
    assert model.decoder is not None
    with torch.no_grad():
        model.decoder.bias[EOS] = -60.0  # never stop early: every sample is max_tokens long
    save_checkpoint(directory, model, tok, training={"mode": "sentence", "step": 0})
    return directory


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def emit(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB (empty where /proc is not available)."""
    out: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(rest.split()[0]) / 1024, 1)  # kB
    return out


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread.

    `reset()` returns the peak since the previous reset; `overall` is the peak of all.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self._max = 0.0
        self.overall = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = proc_status_mb(self.pid).get("VmRSS", 0.0)
            self._max = max(self._max, now)
            self.overall = max(self.overall, now)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> float:
        """The peak since the last reset, then start again."""
        peak, self._max = self._max, proc_status_mb(self.pid).get("VmRSS", 0.0)
        return peak


def scoring_flops(checkpoint: Path, texts: list[str]) -> dict[str, float]:
    """Forward FLOPs per scored token (<eos> included) of the checkpoint on these texts."""
    config = json.loads((checkpoint / "config.json").read_text())
    model = config["model"]
    tails = None
    if model.get("adaptive_cutoffs"):
        from rnnlm.models.tokenizers import EOS, load_tokenizer

        tok = load_tokenizer(checkpoint, config["tokenizer"])
        ids = [i for t in texts for i in [*tok.encode(t), EOS]]
        tails = flops.tail_fractions(model, ids)
    return flops.forward_flops(model, tails)


async def sample_load(base: str, clients: int, seconds: float, max_tokens: int) -> dict:
    """`clients` connections, each sending /sample back to back for `seconds` (bench/loadgen.py:
    the load generator's own cost stays a small part of its core)."""
    tokens, lat, done = 0, [], 0

    async def client(c: Connection, i: int) -> None:
        nonlocal tokens, done
        seed = i * 100_000
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            r = await c.post("/sample", {"max_tokens": max_tokens, "seed": seed})
            lat.append(time.perf_counter() - t0)
            tokens += r["usage"]["completion_tokens"]
            done += 1
            seed += 1

    conns = [Connection(base) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.post("/sample", {"max_tokens": 4}) for c in conns))  # warm up
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(*(client(c, i) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return {
        "bench": "sample", "concurrency": clients, "requests": done, "tokens": tokens,
        "seconds": round(elapsed, 3), "tokens_per_s": round(tokens / elapsed, 1),
        "latency_p50_s": round(_pct(lat, 0.5), 4), "latency_p99_s": round(_pct(lat, 0.99), 4),
    }  # fmt: skip


def score_texts(batch: int) -> list[str]:
    return [SENTENCE[: 40 + (i * 7) % 40] for i in range(batch)]


async def score_load(base: str, batch: int, seconds: float) -> dict:
    texts = score_texts(batch)
    sentences, tokens, lat = 0, 0, []
    async with Connection(base) as c:
        await c.post("/score", {"texts": texts})
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            s = time.perf_counter()
            r = await c.post("/score", {"texts": texts})
            lat.append(time.perf_counter() - s)
            res = r["results"]
            sentences += len(res)
            tokens += sum(x["num_tokens"] for x in res)
        elapsed = time.perf_counter() - t0
    return {
        "bench": "score", "batch_size": batch, "requests": len(lat), "sentences": sentences,
        "tokens": tokens, "seconds": round(elapsed, 3),
        "sentences_per_s": round(sentences / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed, 1),
        "latency_p50_s": round(_pct(lat, 0.5), 4), "latency_p99_s": round(_pct(lat, 0.99), 4),
    }  # fmt: skip


def start_server(
    checkpoint: Path, threads: int, source: Path | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A server of `checkpoint` on a free loopback port; `source`: a source tree (a git
    worktree) whose `rnnlm` it runs instead of the installed one."""
    root = Path(tempfile.mkdtemp(prefix="rnnlm-bench-"))
    (root / "bench").symlink_to(checkpoint.resolve())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RNNLM_TORCH_THREADS": str(threads), "RNNLM_MAX_QUEUE": "1024",
           "RNNLM_LOG_LEVEL": "warning"}  # fmt: skip
    exe = Path(sys.executable).parent / "rnnlm"
    cmd = [str(exe)] if exe.exists() and source is None else [sys.executable, "-m", "rnnlm.cli"]
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve())
    proc = subprocess.Popen(
        [*cmd, "serve", "--models", str(root), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=None if source is None else root,  # `-m` puts the working directory first
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, base, root
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server was not ready in 120 s")


async def run(
    base: str,
    seconds: float,
    max_tokens: int,
    label: str,
    rss: RssSampler,
    checkpoint: Path,
    gemm_gflops: float | None,
) -> None:
    rates = {}
    rss.reset()
    for clients in (1, 8, 32, 64):
        m = await sample_load(base, clients, seconds, max_tokens)
        rates[clients] = m["tokens_per_s"]
        emit(model=label, **m, rss_max_mb=rss.reset())
    for batch in (1, 64):
        m = await score_load(base, batch, seconds)
        fwd = scoring_flops(checkpoint, score_texts(batch))["total"]
        extra: dict[str, Any] = {"forward_flops_per_token": round(fwd)}
        if gemm_gflops:
            bound = gemm_gflops * 1e9 / fwd
            extra.update(
                gemm_gflops=gemm_gflops,
                gemm_bound_tokens_per_s=round(bound, 1),
                pct_of_gemm_bound=round(100 * m["tokens_per_s"] / bound, 2),
            )
        emit(model=label, **m, **extra, rss_max_mb=rss.reset())
    emit(
        model=label,
        bench="summary",
        single_stream_tokens_per_s=rates[1],
        speedup_8=round(rates[8] / rates[1], 2),
        speedup_32=round(rates[32] / rates[1], 2),
        speedup_64=round(rates[64] / rates[1], 2),
        target_speedup_32=15,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint directory to serve")
    p.add_argument(
        "--make-untrained", type=Path, metavar="DIR",
        help="write a 1-layer 256-unit char LSTM checkpoint to DIR and exit",
    )  # fmt: skip
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    p.add_argument("--max-tokens", type=int, default=128, help="per /sample request")
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--label", default=None, help="model name in the output (default: dir name)")
    p.add_argument(
        "--gemm-gflops", type=float, default=None,
        help="fp32 matmul GFLOP/s at the server's thread count: adds the GEMM-bound score rate",
    )  # fmt: skip
    args = p.parse_args()
    if args.make_untrained:
        print(make_untrained(args.make_untrained))
        return
    if args.checkpoint is None:
        p.error("give a checkpoint directory (or --make-untrained DIR)")
    label = args.label or args.checkpoint.resolve().name
    proc, base, root = start_server(args.checkpoint, args.threads)
    try:
        idle = proc_status_mb(proc.pid)
        info = httpx.get(f"{base}/models/bench").json()
        config = json.loads((args.checkpoint / "config.json").read_text())["model"]
        emit(model=label, bench="model", checkpoint=str(args.checkpoint), config=config,
             parameters=info.get("parameters"), mode=info.get("mode"),
             tokenizer=info.get("tokenizer", {}).get("kind"), cpus=os.cpu_count(),
             server_threads=args.threads, max_tokens=args.max_tokens, seconds=args.seconds,
             flops_formula=flops.FORMULA)  # fmt: skip
        with RssSampler(proc.pid) as rss:
            asyncio.run(
                run(base, args.seconds, args.max_tokens, label, rss, args.checkpoint,
                    args.gemm_gflops)
            )  # fmt: skip
        time.sleep(1.0)
        after = proc_status_mb(proc.pid)
        emit(model=label, bench="memory", pid_status="/proc/PID/status",
             rss_idle_loaded_mb=idle.get("VmRSS"), rss_under_load_max_mb=rss.overall,
             rss_idle_after_load_mb=after.get("VmRSS"), rss_hwm_mb=after.get("VmHWM"))  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(15)
        (root / "bench").unlink()
        root.rmdir()


if __name__ == "__main__":
    main()
