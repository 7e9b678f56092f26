"""Speed of the reference cells (models/cells.py) against torch's fused modules.

    python bench/cells.py [--batch 32] [--seq 64] [--hidden 256] [--layers 1]
                          [--threads N] [--rounds 7] [--compile]

Times forward + backward of the recurrent stack alone (input (B, T, H), loss =
sum of the outputs) and prints one JSON object per line: tokens/s (B·T over
the median iteration time) and `speed_ratio`, the fused module's time over
this one's (1.0 = as fast; the reference-only `gru-simple` and `lstm-peephole`
are compared with fused `gru` and `lstm`). Every module runs once per round,
in turn, so that load from other processes hits all alike. `--compile` adds
rows where each cell's step is wrapped in torch.compile (compiled during the
warm-up; only the steady state is timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rnnlm.models.cells import CELLS, Cell, RecurrentStack

FUSED: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
BASELINE = {
    "rnn": "rnn",
    "gru": "gru",
    "lstm": "lstm",
    "gru-simple": "gru",
    "lstm-peephole": "lstm",
}


def iteration_time(module: nn.Module, x: Tensor) -> float:
    """Seconds for one forward + backward."""
    t0 = time.perf_counter()
    out, _ = module(x)
    out.sum().backward()
    return time.perf_counter() - t0


def compile_steps(stack: RecurrentStack) -> RecurrentStack:
    for layer in stack.layers:
        cell: Cell = layer  # type: ignore[assignment]
        step: Callable[..., tuple[Tensor, ...]] = torch.compile(cell.step, dynamic=False)
        cell.step = step  # type: ignore[method-assign]
    return stack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H = args.hidden
    x = torch.randn(args.batch, args.seq, H)  # (B, T, H): the input is as wide as the state
    modules: dict[tuple[str, str], nn.Module] = {}
    for name, cls in FUSED.items():
        modules[name, "fused"] = cls(H, H, args.layers, batch_first=True)
    for name in CELLS:
        modules[name, "reference"] = RecurrentStack(name, H, H, args.layers)
        if args.compile:
            modules[name, "reference+compile"] = compile_steps(
                RecurrentStack(name, H, H, args.layers)
            )
    for m in modules.values():  # warm-up (and compilation)
        iteration_time(m, x)
        iteration_time(m, x)
    # Rounds over every module in turn, so a busy neighbour slows all of them alike;
    # each ratio compares times from the same round.
    times: dict[tuple[str, str], list[float]] = {k: [] for k in modules}
    for _ in range(args.rounds):
        for key, m in modules.items():
            times[key].append(statistics.median(iteration_time(m, x) for _ in range(3)))
    tokens = args.batch * args.seq
    for (name, impl), ts in times.items():
        base = times[BASELINE[name], "fused"]
        row = {
            "cell": name,
            "impl": impl,
            "tokens_per_s": round(tokens / statistics.median(ts)),
            "vs_fused": None if impl == "fused" else BASELINE[name],
            "speed_ratio": round(
                statistics.median(b / t for b, t in zip(base, ts, strict=True)), 3
            ),
            "batch": args.batch,
            "seq": args.seq,
            "hidden": H,
            "layers": args.layers,
            "threads": args.threads,
            "torch": torch.__version__,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
