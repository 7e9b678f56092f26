"""rnnlm's own n-gram on a corpus's test split, for side-by-side comparison with KenLM.

    python bench/rnnlm_ngram.py CORPUS_DIR TEST_FILE --order 5

Estimates interpolated modified Kneser-Ney of `--order` from the corpus's
training split (`training.ngram.estimate`, what `rnnlm train` does when it
ends) and scores every line of the corpus's test split as `<bos> … <eos>`, the
way `bench/ngram.py` scores KenLM's: perplexity per token (every token and
`<eos>`) and bits per character (-Σ log2 p over the characters of TEST_FILE
plus one per line). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rnnlm.models.tokenizers import BOS  # noqa: E402
from rnnlm.training.corpus import TokenSplit, load_corpus_tokenizer  # noqa: E402
from rnnlm.training.ngram import estimate  # noqa: E402


def split_logprob(model, split: TokenSplit) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    width = model.order - 1
    total, count = 0.0, 0
    for start in range(0, len(split), 4096):
        hist, tgt = [], []
        for i in range(start, min(len(split), start + 4096)):
            s = [BOS, *split.sequence(i).tolist()]
            for p in range(1, len(s)):
                hist.append(([-1] * width + s[:p])[len(s[:p]) :] if width else [])
                tgt.append(s[p])
        lp = model.logprob_of(np.array(hist, dtype=np.int64).reshape(len(tgt), width),
                              np.array(tgt))  # fmt: skip
        total += float(lp.sum())
        count += len(tgt)
    return total, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("test_file", type=Path, help="the test split as text (for its characters)")
    ap.add_argument("--order", type=int, required=True)
    args = ap.parse_args()
    tok = load_corpus_tokenizer(args.corpus)
    train = TokenSplit(args.corpus, "train")
    t0 = time.monotonic()
    model, info = estimate(train.tokens, np.asarray(train.offsets), args.order, tok.vocab_size)
    seconds = time.monotonic() - t0
    out = {"order": args.order, "estimate_s": round(seconds, 2), "counts": info.counts,
           "discounts": info.to_dict()["discounts"], "fallback_orders": info.fallback_orders,
           "model_mib": round(model.nbytes() / 2**20, 1)}  # fmt: skip
    for name in ("valid", "test"):
        lp, n = split_logprob(model, TokenSplit(args.corpus, name))
        if not n:
            continue  # an empty split
        out[f"{name}_ppl"] = math.exp(-lp / n)
        out[f"{name}_predictions"] = n
        if name == "test":
            lines = [ln for ln in args.test_file.read_text(encoding="utf-8").splitlines()]
            chars = sum(len(ln) + 1 for ln in lines)
            out["test_chars_with_eol"] = chars
            out["test_bits_per_char"] = -lp / chars / math.log(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
