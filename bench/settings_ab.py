"""Two servers that differ in one setting, loaded in turn: an A/B in the same minutes.

    python bench/settings_ab.py CHECKPOINT RNNLM_BLAS=torch RNNLM_BLAS=auto
                                [--clients 1,32] [--rounds 4] [--seconds 6]
    python bench/settings_ab.py --untrained RNNLM_BLAS=torch RNNLM_BLAS=auto
    python bench/settings_ab.py CHECKPOINT RNNLM_LOG_LEVEL=warning RNNLM_LOG_LEVEL=warning \
                                --source-a /tmp/before --source-b .

On this kind of shared VM one run's speed moves by ±15–30% from one minute to
the next, so two `serving.py` runs minutes apart cannot tell a 5% change. Here
both servers are started at once on CPU 0 (one torch thread each; an idle one
only waits), and the load generator on CPU 1 sends /sample requests to A, then to
B, then to B, then to A, ..., for --rounds rounds of each client count. Prints
one JSON object per load, then per client count both series and the ratio of
their medians (B over A). `--source-a`/`--source-b`: the servers run the `rnnlm` of
two source trees (git worktrees of two commits) instead of the installed one, for
a change that must not be a step back (bench/source_ab.py does the engine alone).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_service  # noqa: E402
from serving import CLIENT_CPU, SERVER_CPU, checkpoint_of, pin  # noqa: E402


def setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("RNNLM_"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected RNNLM_NAME=value")
    return name, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("checkpoint", nargs="?", type=Path)
    p.add_argument("--untrained", action="store_true", help="the untrained 1x256 char LSTM")
    p.add_argument("a", type=setting, help="server A's setting, RNNLM_NAME=value")
    p.add_argument("b", type=setting, help="server B's setting")
    p.add_argument("--clients", default="1,32", help="client counts, comma-separated")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--source-a", type=Path, help="server A runs this tree's rnnlm")
    p.add_argument("--source-b", type=Path, help="server B runs this tree's rnnlm")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="rnnlm-ab-"))
    servers = {}
    try:
        ckpt = checkpoint_of(p, args, tmp)
        pin(SERVER_CPU)  # the servers inherit it
        for label, (name, value) in (("A", args.a), ("B", args.b)):
            saved = os.environ.get(name)
            os.environ[name] = value
            source = args.source_a if label == "A" else args.source_b
            servers[label] = bench_service.start_server(ckpt, threads=1, source=source)
            if saved is None:
                del os.environ[name]
            else:
                os.environ[name] = saved
        pin(CLIENT_CPU)
        rates: dict[tuple[str, int], list[float]] = {(s, c): [] for s in servers for c in clients}
        for r in range(args.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]  # neither always goes first
            for c in clients:
                for label in order:
                    base = servers[label][1]
                    m = asyncio.run(bench_service.sample_load(base, c, args.seconds,
                                                              args.max_tokens))  # fmt: skip
                    rates[(label, c)].append(m["tokens_per_s"])
                    print(json.dumps({**m, "bench": "settings_ab", "server": label, "round": r}),
                          flush=True)  # fmt: skip
        for c in clients:
            a, b = rates[("A", c)], rates[("B", c)]
            print(json.dumps({
                "bench": "settings_ab_summary", "clients": c,
                "a": "=".join(args.a), "b": "=".join(args.b),
                "source_a": str(args.source_a or ""), "source_b": str(args.source_b or ""),
                "a_tokens_per_s": a, "b_tokens_per_s": b,
                "b_over_a_median": round(statistics.median(b) / statistics.median(a), 3),
            }), flush=True)  # fmt: skip
    finally:
        for proc, _, root in servers.values():
            proc.terminate()
            proc.wait(15)
            (root / "bench").unlink()
            root.rmdir()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
