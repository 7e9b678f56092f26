"""Adapting to the text read, side by side: the RNN's step, the cache, both, neither.

    python bench/adapting.py RUN/best --texts FILE [--settings 0.3:0,0.3:8192,0:8192]

Issue #31's lever 4 (models/adapt.py): the lines of FILE read in order as one
document, each setting `lr:cache` (the RNN's SGD rate, 0 for no step; the cache's
tokens, 0 for none) scored by the same code as `rnnlm eval --adapt`
(training/evaluate.py's `adapted_figures`), after the static figures (`static`, by
eval's `static_figures`). One JSON object per setting on stdout: bits per character
and per token, perplexity, and the seconds it took. Rows of their own: adapting
figures are never the model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rnnlm.models.adapt import Adaptation  # noqa: E402
from rnnlm.models.checkpoint import load_checkpoint  # noqa: E402
from rnnlm.models.engine import Engine  # noqa: E402
from rnnlm.training.evaluate import (  # noqa: E402
    adapted_figures,
    read_lines,
    static_figures,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("model", type=Path, help="checkpoint directory")
    p.add_argument("--texts", type=Path, required=True, help="one text a line, read in order")
    p.add_argument("--settings", default="0.3:0,0.3:8192,0:8192", help="lr:cache,...")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = p.parse_args()
    settings = []
    for item in args.settings.split(","):
        try:
            lr, cache = item.split(":")
            settings.append(Adaptation(lr=float(lr), cache=int(cache)))
        except ValueError as e:
            p.error(f"--settings {item!r}: {e}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    lines = read_lines(args.texts)
    engine = Engine(load_checkpoint(args.model))
    t0 = time.perf_counter()
    static = static_figures(engine, lines)
    tokens, chars = static["tokens"], static["characters"]
    row = {"bench": "adapting", "setting": "static", "model": str(args.model),
           "lines": len(lines), "tokens": tokens, "characters": chars,
           "bits_per_character": static["bits_per_character"],
           "perplexity": static["perplexity"],
           "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    print(json.dumps(row), flush=True)
    for adapt in settings:
        t0 = time.perf_counter()
        fig = adapted_figures(engine, lines, adapt, chars)
        row = {"bench": "adapting", "setting": f"lr {adapt.lr:g}, cache {adapt.cache}",
               "model": str(args.model), "lr": adapt.lr, "cache": adapt.cache,
               "lines": len(lines), "tokens": tokens, "characters": chars,
               "bits_per_character": fig["bits_per_character"], "perplexity": fig["perplexity"],
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
