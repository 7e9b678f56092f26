"""Perplexity of every `--cell` on the same small corpus, after the same number of steps.

    python bench/cells_quality.py [--chars 800000] [--steps 600] [--hidden 128]
                                  [--layers 1] [--threads 1] [--out data/bench/cells]

The corpus is the standard library's docstrings (`rnnlm.demo.stdlib_docstrings`,
the first `--chars` characters), character level, split 90/5/5 by `rnnlm corpus`
with its fixed seed. Each cell trains through the real CLI (`rnnlm train --cell
X`) with the same flags, seed and number of steps, so each sees the same batches;
the run's own summary gives the test perplexity (per character, `<eos>`
included) of its best checkpoint. Step-matched rather than timed, so a busy
machine changes the seconds, not the perplexities. Prints one JSON object per
cell: parameters, wall seconds, training tokens/s, best valid and test PPL and
test bits per character.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

CELLS = ("rnn", "gru", "lstm", "gru-simple", "lstm-peephole")
ROOT = Path(__file__).resolve().parent.parent


def rnnlm(log: Path, *argv: str) -> None:
    """Run the CLI; its output goes to `log`, so stdout holds only this script's JSON."""
    with log.open("w") as f:
        subprocess.run(
            [sys.executable, "-m", "rnnlm.cli", *argv], cwd=ROOT, check=True, stdout=f, stderr=f
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=800_000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--embedding", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "bench" / "cells")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from rnnlm.demo import stdlib_docstrings
    from rnnlm.models.checkpoint import load_checkpoint

    args.out.mkdir(parents=True, exist_ok=True)
    text = args.out / "docstrings.txt"
    text.write_text("\n".join(stdlib_docstrings(args.chars)) + "\n", encoding="utf-8")
    corpus = args.out / "corpus"
    rnnlm(args.out / "corpus.log", "corpus", str(text), "--out", str(corpus), "--tokenizer", "char")
    for cell in args.cells.split(","):
        run = args.out / cell
        t0 = time.perf_counter()
        rnnlm(
            args.out / f"{cell}.log",
            "train", "--corpus", str(corpus), "--out", str(run), "--cell", cell,
            "--layers", str(args.layers), "--hidden", str(args.hidden),
            "--embedding", str(args.embedding), "--batch-size", str(args.batch_size),
            "--max-steps", str(args.steps), "--eval-every", str(max(args.steps // 4, 1)),
            "--patience", "1000", "--threads", str(args.threads), "--seed", "0",
            "--no-progress",
        )  # fmt: skip
        wall = time.perf_counter() - t0
        summary = json.loads((run / "summary.json").read_text())
        model = load_checkpoint(run / "best").model
        print(
            json.dumps(
                {
                    "bench": "cell_quality",
                    "cell": cell,
                    "layers": args.layers,
                    "hidden": args.hidden,
                    "embedding": args.embedding,
                    "parameters": model.num_parameters(),
                    "steps": summary["steps"],
                    "tokens": summary["tokens"],
                    "train_seconds": summary["elapsed_s"],
                    "wall_seconds": round(wall, 1),
                    "tokens_per_s": summary.get("tokens_per_s"),
                    "best_valid_ppl": summary["best_valid_ppl"],
                    "test_ppl": summary["test_ppl"],
                    "test_bits_per_char": math.log2(summary["test_ppl"]),
                    "test_tokens": summary["test_tokens"],
                    "threads": args.threads,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
