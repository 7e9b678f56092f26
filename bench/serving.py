"""Serving speed against the model's own: the engine alone, the service, the GEMM bound.

    python bench/serving.py CHECKPOINT [--seconds 6] [--max-tokens 200] [--label NAME]
                            [--profile SECONDS]
    python bench/serving.py --untrained [...]      # the 1x256 char LSTM of bench_service.py
    python bench/serving.py ... --blas torch       # torch's products only (models/blas.py)

Everything runs with one torch thread on CPU 0, the load generator (this
process, for the service) on CPU 1, so the figures are the server's and not a
fight for the two cores. Measured in one run, so that each overhead shows as a
ratio:

- gemm: torch.matmul of square fp32 matrices on one thread: the machine's rate.
- engine: the engine's decoding `Batch` driven in a loop, no HTTP: batch 1, and
  32 rows kept full (a finished sequence is replaced at once), sampling at
  temperature 1 until <eos> or --max-tokens. Tokens per second, ms per step.
- service: `rnnlm serve` on CPU 0; /sample with 1 client and with 32 clients
  (back to back requests, --max-tokens each), /score with batches of 64 short
  sentences. Tokens per second; for 1 stream also ms per token.
- the GEMM-bound rate of each: the forward FLOPs per token (bench/flops.py)
  against the GEMM rate: what the CPU could do if the model's matrix products
  were all there was.

With --profile S, py-spy records the server for S seconds under the 32-client
load and the top frames by own time are printed (py-spy must be installed).
Prints one JSON object per measurement, then a summary with the issue's goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_service  # noqa: E402
from speed import measure_gemm  # noqa: E402

if TYPE_CHECKING:
    from rnnlm.models.blas import Choice

SERVER_CPU, CLIENT_CPU = 0, 1


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def emit(**kw: Any) -> dict[str, Any]:
    print(json.dumps(kw), flush=True)
    return kw


def engine_rate(
    checkpoint: Path, rows: int, seconds: float, max_tokens: int, blas: Choice = "auto"
) -> dict[str, Any]:
    """Tokens/s of the engine's Batch kept at `rows` sequences, no HTTP."""
    import torch

    from rnnlm.models.batch import Batch
    from rnnlm.models.checkpoint import load_checkpoint
    from rnnlm.models.engine import Engine
    from rnnlm.models.sampling import SampleParams

    torch.set_num_threads(1)
    engine = Engine(load_checkpoint(checkpoint), blas=blas)
    batch = Batch(engine)
    seed = 0

    def fill() -> None:
        nonlocal seed
        need = rows - len(batch)
        if need > 0:
            params = SampleParams(max_tokens=max_tokens, seed=seed)
            batch.add([engine.generation("", params) for _ in range(need)])
            seed += need

    fill()
    for _ in range(20):  # warm up
        batch.step()
        fill()
    tokens = steps = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tokens += len(batch)
        batch.step()
        steps += 1
        fill()
    elapsed = time.perf_counter() - t0
    return {"bench": "engine", "rows": rows, "steps": steps, "tokens": tokens,
            "blas": blas, "products": products_of(engine),
            "tokens_per_s": round(tokens / elapsed, 1),
            "ms_per_step": round(1000 * elapsed / steps, 4)}  # fmt: skip


def products_of(engine: Any) -> dict[str, str]:
    """Which library each product of the engine's host step took (models/blas.py), by
    name: layer0.ih, layer0.hh, ..., proj, output."""
    hs = engine.host_step
    if hs is None:
        return {}
    named = {f"layer{k}.{n}": p for k, layer in enumerate(hs.layers)
             for n, p in (("ih", layer.ih), ("hh", layer.hh))}  # fmt: skip
    named |= {n: p for n, p in (("proj", hs.proj), ("output", hs.output)) if p is not None}
    lib = {True: "numpy", False: "torch"}
    return {n: f"{lib[p.numpy_few]} for few rows, {lib[p.numpy_many]} for many"
            for n, p in named.items()}  # fmt: skip


def profile(pid: int, seconds: float, out: Path) -> list[dict[str, Any]]:
    """py-spy's own-time top frames of the server over `seconds`."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out / "profile.txt"
    subprocess.run([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                    "--format", "raw", "--output", str(raw), "--nonblocking"],
                   check=True, capture_output=True)  # fmt: skip
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        count = int(n)
        total += count
        thread = frames[0]
        own[f"{thread} :: {frames[-1]}"] += count
    return [{"frame": f, "share": round(c / total, 4)} for f, c in own.most_common(15)]


async def service_load(base: str, seconds: float, max_tokens: int) -> dict[int, dict[str, Any]]:
    out = {}
    for clients in (1, 32):
        out[clients] = await bench_service.sample_load(base, clients, seconds, max_tokens)
    return out


def checkpoint_of(p: argparse.ArgumentParser, args: argparse.Namespace, tmp: Path) -> Path:
    """The checkpoint the command line names, or the untrained one made under `tmp`."""
    if args.untrained:
        return bench_service.make_untrained(tmp / "untrained")
    if not args.checkpoint:
        p.error("give a checkpoint directory or --untrained")
    return Path(args.checkpoint)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("checkpoint", nargs="?", type=Path)
    p.add_argument("--untrained", action="store_true", help="the untrained 1x256 char LSTM")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--label", default=None)
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--blas", choices=["auto", "torch", "numpy"], default="auto",
                   help="the decoding step's products: models/blas.py")  # fmt: skip
    args = p.parse_args()
    os.environ["RNNLM_BLAS"] = args.blas  # the server inherits it
    tmp = Path(tempfile.mkdtemp(prefix="rnnlm-serving-"))
    try:
        ckpt = checkpoint_of(p, args, tmp)
        label = args.label or ("untrained" if args.untrained else ckpt.resolve().name)
        model = json.loads((ckpt / "config.json").read_text())["model"]
        pin(SERVER_CPU)
        gemm = emit(model=label, **{**measure_gemm(1, 2.0), "bench": "serving_gemm"})
        fwd = bench_service.scoring_flops(ckpt, bench_service.score_texts(64))["total"]
        bound = gemm["gflops"] * 1e9 / fwd
        emit(model=label, bench="gemm_bound", forward_flops_per_token=round(fwd),
             gemm_bound_tokens_per_s=round(bound, 1), config=model)  # fmt: skip
        engine = {rows: emit(model=label, **engine_rate(ckpt, rows, args.seconds,
                                                          args.max_tokens, args.blas))
                  for rows in (1, 32)}  # fmt: skip
        # The server on CPU 0 (it inherits this affinity), the load from CPU 1.
        proc, base, root = bench_service.start_server(ckpt, threads=1)
        pin(CLIENT_CPU)
        try:
            sample = asyncio.run(service_load(base, args.seconds, args.max_tokens))
            for m in sample.values():
                emit(model=label, **m)
            scored = asyncio.run(bench_service.score_load(base, 64, args.seconds))
            score = emit(model=label, **scored)
            top = []
            if args.profile:
                load = asyncio.run
                import threading

                t = threading.Thread(target=lambda: load(bench_service.sample_load(
                    base, 32, args.profile + 2, args.max_tokens)))  # fmt: skip
                t.start()
                time.sleep(1)
                top = profile(proc.pid, args.profile, tmp)
                t.join()
                emit(model=label, bench="profile", clients=32, seconds=args.profile, top=top)
        finally:
            proc.terminate()
            proc.wait(15)
            (root / "bench").unlink()
            root.rmdir()
        one, many = sample[1], sample[32]
        ms_per_token = 1000 / one["tokens_per_s"] if one["tokens_per_s"] else None
        emit(
            model=label,
            bench="serving_summary",
            blas=args.blas,
            gemm_gflops_1_thread=gemm["gflops"],
            gemm_bound_tokens_per_s=round(bound, 1),
            engine_1_tokens_per_s=engine[1]["tokens_per_s"],
            engine_32_tokens_per_s=engine[32]["tokens_per_s"],
            service_1_tokens_per_s=one["tokens_per_s"],
            service_32_tokens_per_s=many["tokens_per_s"],
            service_1_ms_per_token=round(ms_per_token, 4) if ms_per_token else None,
            service_share_of_engine_1=round(one["tokens_per_s"] / engine[1]["tokens_per_s"], 3),
            service_share_of_engine_32=round(
                many["tokens_per_s"] / engine[32]["tokens_per_s"], 3
            ),
            speedup_32=round(many["tokens_per_s"] / one["tokens_per_s"], 2),
            pct_of_gemm_bound_32=round(100 * many["tokens_per_s"] / bound, 1),
            engine_32_pct_of_gemm_bound=round(100 * engine[32]["tokens_per_s"] / bound, 1),
            score_64_tokens_per_s=score["tokens_per_s"],
            score_64_pct_of_gemm_bound=round(100 * score["tokens_per_s"] / bound, 1),
            goals={"ms_per_token_1": 0.25, "pct_of_gemm_bound_32": 50,
                   "service_share_of_engine_32": 0.85, "score_64_pct_of_gemm_bound": 60},
        )  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
