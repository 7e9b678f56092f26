"""The Python API's `score_batch` against `POST /score`, on the same texts and core.

    python bench/api_speed.py CHECKPOINT [--batch 64] [--seconds 5]

`rnnlm.load(CHECKPOINT).score_batch(texts)` in this process, pinned to CPU 0 with one
torch thread, then the real server (`rnnlm serve`, one torch thread) on CPU 0 with
the load generator on CPU 1 (bench/bench_service.py's `/score` load, batches of the
same texts): tokens per second of each, and the ratio. The API runs the engine's
scoring as the server does, without HTTP, JSON or the scheduler, so it should be at
least as fast.

Prints JSON lines: bench "api_score", "score" (the service's), "api_vs_service".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_service  # noqa: E402
from serving import CLIENT_CPU, SERVER_CPU, pin  # noqa: E402

import rnnlm  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    texts = bench_service.score_texts(args.batch)
    pin(SERVER_CPU)
    torch.set_num_threads(1)
    lm = rnnlm.load(args.checkpoint)
    tokens = sum(r.num_tokens for r in lm.score_results(texts))
    lm.score_batch(texts)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        lm.score_batch(texts)
        calls += 1
    api = calls * tokens / (time.perf_counter() - t0)
    print(json.dumps({"bench": "api_score", "batch_size": args.batch, "calls": calls,
                      "tokens_per_s": round(api, 1)}), flush=True)  # fmt: skip
    proc, base, root = bench_service.start_server(args.checkpoint, threads=1)
    pin(CLIENT_CPU)
    try:
        served = asyncio.run(bench_service.score_load(base, args.batch, args.seconds))
    finally:
        proc.terminate()
        proc.wait(15)
        (root / "bench").unlink()
        root.rmdir()
    print(json.dumps(served), flush=True)
    print(json.dumps({"bench": "api_vs_service", "model": str(args.checkpoint),
                      "api_tokens_per_s": round(api, 1),
                      "service_tokens_per_s": served["tokens_per_s"],
                      "ratio": round(api / served["tokens_per_s"], 3)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
