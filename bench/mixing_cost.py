"""What the n-gram, the match model or the mixing gate costs the service: the same
model served with and without it.

    python bench/mixing_cost.py CHECKPOINT --texts FILE [--part ngram|match|gate]
                                [--seconds 6] [--rounds 2]

CHECKPOINT must hold the part (a model `rnnlm train` made). A copy without it
(`rnnlm ngram remove`; for the match model, config.json's "match" and its file
removed; for the gate (models/gate.py), config.json's "ngram.lambda_gate" removed,
so that its λ table mixes) is served beside it, one server at a time, on the same
port settings; the server runs on CPU 0 with one torch thread and this load
generator on CPU 1 (where the machine has two), so that the figures are the
server's and not a fight for the cores. Each round measures both variants in
turn (so drift on a shared machine hits both alike): `/sample` tokens/s with 1
and 8 concurrent clients (128-token cap; trained models mostly end earlier, at
`<eos>`), and `/score` tokens/s for batches of 64 lines of FILE. Prints one JSON
object per measurement, then the ratios (with / without, the median over rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_service  # noqa: E402
from loadgen import Connection  # noqa: E402


async def score_lines(base: str, lines: list[str], seconds: float) -> dict[str, Any]:
    tokens, requests = 0, 0
    async with Connection(base) as c:
        await c.post("/score", {"texts": lines[:64]})
        t0 = time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < seconds:
            batch = lines[i : i + 64] or lines[:64]
            i = (i + 64) % max(1, len(lines) - 64)
            r = await c.post("/score", {"texts": batch})
            tokens += sum(x["num_tokens"] for x in r["results"])
            requests += 1
        elapsed = time.perf_counter() - t0
    return {"bench": "score", "batch_size": 64, "requests": requests, "tokens": tokens,
            "tokens_per_s": round(tokens / elapsed, 1)}  # fmt: skip


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def detach_match(directory: Path) -> None:
    """The checkpoint without its match model: what it was before `attach_ngram` added it."""
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    (directory / config.pop("match")["file"]).unlink()
    config_path.write_text(json.dumps(config, indent=2))


def detach_gate(directory: Path) -> None:
    """The checkpoint without its gate: λ from its table, as before the gate was fit."""
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["ngram"]["lambda_gate"] = None
    config_path.write_text(json.dumps(config, indent=2))


def has_part(config: dict[str, Any], part: str) -> bool:
    if part == "gate":
        return (config.get("ngram") or {}).get("lambda_gate") is not None
    return part in config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--texts", type=Path, required=True, help="lines to score (a test split)")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--part", choices=["ngram", "match", "gate"], default="ngram")
    args = p.parse_args()
    from rnnlm.training.mixture import detach_ngram

    part = args.part
    if not has_part(json.loads((args.checkpoint / "config.json").read_text()), part):
        raise SystemExit(f"{args.checkpoint}: has no {part} to measure")
    lines = [ln for ln in args.texts.read_text(encoding="utf-8").splitlines() if ln.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain"
        shutil.copytree(args.checkpoint, plain)
        if part == "ngram":
            detach_ngram(plain)
        elif part == "gate":
            detach_gate(plain)
        else:
            detach_match(plain)
        variants = {f"with_{part}": args.checkpoint, f"without_{part}": plain}
        rates: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
        # The server inherits CPU 0; this process moves to CPU 1 once it has started.
        for r in range(args.rounds):
            for name, ckpt in variants.items():
                pin(0)
                proc, base, root = bench_service.start_server(ckpt, threads=1)
                pin(1)
                try:
                    for clients in (1, 8):
                        m = asyncio.run(bench_service.sample_load(base, clients, args.seconds, 128))
                        key = f"sample_{clients}"
                        rates[name].setdefault(key, []).append(m["tokens_per_s"])
                        print(json.dumps({**m, "variant": name, "round": r}), flush=True)
                    m = asyncio.run(score_lines(base, lines, args.seconds))
                    rates[name].setdefault("score_64", []).append(m["tokens_per_s"])
                    print(json.dumps({**m, "variant": name, "round": r}), flush=True)
                finally:
                    proc.terminate()
                    proc.wait(15)
                    (root / "bench").unlink()
                    root.rmdir()
    summary: dict[str, Any] = {"bench": "mixing_cost", "checkpoint": str(args.checkpoint),
                               "rounds": args.rounds, "seconds": args.seconds}  # fmt: skip
    summary["part"] = part
    for key in rates[f"with_{part}"]:
        w = statistics.median(rates[f"with_{part}"][key])
        wo = statistics.median(rates[f"without_{part}"][key])
        summary[key] = {f"with_{part}_tokens_per_s": w, f"without_{part}_tokens_per_s": wo,
                        "ratio": round(w / wo, 3)}  # fmt: skip
    summary["worst_ratio"] = min(v["ratio"] for k, v in summary.items() if isinstance(v, dict))
    summary["goal_min_ratio"] = 0.8
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
