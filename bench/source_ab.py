"""Two source trees measured in turn on the same core: is a change a step back?

    git worktree add /tmp/before <commit>
    python bench/source_ab.py /tmp/before . CHECKPOINT [--rounds 6] [--seconds 3]
    python bench/source_ab.py /tmp/before . --untrained

`bench/settings_ab.py` compares two settings of one tree; this compares two trees
(two commits), for a refactor that must keep every figure. Each measurement is a
fresh process that imports `rnnlm` from one tree (PYTHONPATH), pinned to CPU 0 with
one torch thread, as the server runs; the trees alternate A, B, B, A, ... so neither
always runs first, and the summary is the ratio of medians (B over A), per figure:

- `sample_1_ms`: ms a token of one stream, the engine's batch alone (no HTTP);
- `sample_32_tps`: tokens/s of 32 streams;
- `prefill_32_ms`: ms to admit 32 prompts of 8 to 70 tokens (a batch's `add`);
- `score_64_tps`: tokens/s of `score_batch` on 64 texts sampled from the model.

Figures of the service (HTTP included) come from `bench/settings_ab.py --source-a
--source-b`. Prints one JSON object per measurement, then one per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FIGURES = {"sample_1_ms": -1, "sample_32_tps": 1, "prefill_32_ms": -1, "score_64_tps": 1}


def measure(checkpoint: Path, seconds: float) -> dict[str, Any]:
    """The figures of the `rnnlm` this process imports (only calls that both trees have),
    and the tree it came from."""
    import torch

    import rnnlm
    from rnnlm.models.batch import Batch
    from rnnlm.models.checkpoint import load_checkpoint
    from rnnlm.models.engine import Engine
    from rnnlm.models.sampling import SampleParams

    torch.set_num_threads(1)
    engine = Engine(load_checkpoint(checkpoint))
    out: dict[str, Any] = {"source": str(Path(rnnlm.__file__).parent.parent)}

    # bench/serving.py's engine rate, imported only now: the rnnlm it imports is the
    # one already loaded above from the tree under test (serving.py puts this checkout's
    # root first on sys.path, which reaches only modules not yet imported).
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving import engine_rate

    out["sample_1_ms"] = 1000 / engine_rate(checkpoint, 1, seconds, 200)["tokens_per_s"]
    out["sample_32_tps"] = engine_rate(checkpoint, 32, seconds, 200)["tokens_per_s"]
    measured = sys.modules["rnnlm.models.engine"].__file__ or ""
    assert measured.startswith(out["source"]), f"measured {measured}, not {out['source']}"
    # Texts the model itself writes: prompts for prefill, texts to score.
    params = SampleParams(max_tokens=70, seed=1)
    texts = [engine.result(g).text for g in _run(engine, Batch, params, 64)]
    tok = engine.tokenizer
    prompts = [tok.decode(tok.encode(t)[: 8 + (i * 7) % 63]) for i, t in enumerate(texts[:32])]
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = Batch(engine)
        batch.add([engine.generation(p, SampleParams(max_tokens=1, seed=i))
                   for i, p in enumerate(prompts)])  # fmt: skip
        runs += 1
    out["prefill_32_ms"] = 1000 * (time.perf_counter() - t0) / runs
    engine.score_batch(texts)  # warm up
    n_tokens = sum(r.num_tokens for r in engine.score_batch(texts))
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        engine.score_batch(texts)
        runs += 1
    out["score_64_tps"] = n_tokens * runs / (time.perf_counter() - t0)
    return out


def _run(engine: Any, batch_cls: Any, params: Any, n: int) -> list[Any]:
    batch = batch_cls(engine)
    gens = [engine.generation("", params, i) for i in range(n)]
    batch.add(gens)
    while len(batch):
        batch.step()
    return gens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("a", type=Path, help="tree A (the before), a git worktree")
    p.add_argument("b", type=Path, help="tree B (the after)")
    p.add_argument("checkpoint", nargs="?", type=Path)
    p.add_argument("--untrained", action="store_true", help="the untrained 1x256 char LSTM")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:  # one measurement, in the tree PYTHONPATH names
        print(json.dumps(measure(args.checkpoint, args.seconds)), flush=True)
        return
    # Only here: bench_service puts this checkout's root first on sys.path, and a worker
    # must import the rnnlm of the tree it measures.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving import SERVER_CPU, checkpoint_of

    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for label, tree in trees.items():
        if not (tree / "rnnlm" / "__init__.py").exists():
            p.error(f"tree {label}: {tree} has no rnnlm package")
    tmp = Path(tempfile.mkdtemp(prefix="rnnlm-source-ab-"))
    try:
        ckpt = checkpoint_of(p, args, tmp).resolve()
        got: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        for r in range(args.rounds):
            for label in ["A", "B"] if r % 2 == 0 else ["B", "A"]:
                env = {**os.environ, "PYTHONPATH": str(trees[label])}
                cmd = ["taskset", "-c", str(SERVER_CPU)] if shutil.which("taskset") else []
                cmd += [sys.executable, __file__, str(trees["A"]), str(trees["B"]), str(ckpt),
                        "--worker", "--seconds", str(args.seconds)]  # fmt: skip
                line = subprocess.run(cmd, env=env, cwd=tmp, check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1]  # fmt: skip
                m = json.loads(line)
                got[label].append(m)
                print(json.dumps({"bench": "source_ab", "tree": label, "round": r, **m}),
                      flush=True)  # fmt: skip
        for name, better in FIGURES.items():
            a = statistics.median(m[name] for m in got["A"])
            b = statistics.median(m[name] for m in got["B"])
            print(json.dumps({
                "bench": "source_ab_summary", "figure": name, "a": str(trees["A"]),
                "b": str(trees["B"]), "a_median": round(a, 4), "b_median": round(b, 4),
                "b_over_a": round(b / a, 3),
                # > 1: B is better (faster), whichever way the figure runs.
                "b_better_by": round((b / a) ** better, 3),
            }), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
