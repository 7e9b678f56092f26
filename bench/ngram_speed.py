"""How fast rnnlm estimates an n-gram, and how much memory it takes, as the corpus grows.

    python bench/ngram_speed.py [--tokens 1e6,1e7] [--order 5] [--lmplz PATH]

The corpus: the Python source files of this interpreter's standard library and
site-packages (about 160 MB of real text on every machine with Python, nothing
downloaded), split into words and punctuation as `rnnlm corpus --tokenizer
word` splits them, one line a sequence, the 50,000 most frequent tokens kept
(the rest `<unk>`), cut to each size asked for. Each size is estimated in a
fresh child process that first loads the token ids (the corpus `rnnlm train`
would have memory-mapped), then runs `training.ngram.estimate`; it reports the
wall time of the estimation and the growth of the peak resident set
(VmHWM) the estimation caused, so the token ids themselves are not counted.

With --lmplz, KenLM's lmplz estimates the same text at the largest size (its
own peak and time; -S 80% is its default memory target, here -S 4G) for
comparison. Prints one JSON object per size.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORD_RE = re.compile(r"\w+|[^\w\s]")
VOCAB = 50_000

CHILD = """
import json, sys, time, resource
import numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from rnnlm.training.ngram import estimate

def hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0

data = np.load(sys.argv[1])
tokens, offsets = data["tokens"], data["offsets"]
tokens.sum(), offsets.sum()  # resident before measuring
before = hwm_kib()
t0 = time.monotonic()
model, info = estimate(tokens, offsets, int(sys.argv[2]), int(sys.argv[3]))
seconds = time.monotonic() - t0
print(json.dumps({"seconds": seconds, "peak_growth_mib": (hwm_kib() - before) / 1024,
                  "peak_mib": hwm_kib() / 1024, "counts": info.counts,
                  "model_mib": model.nbytes() / 2**20}))
"""


def python_sources() -> list[Path]:
    roots = {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib")}
    files: list[Path] = []
    for r in sorted(roots):
        files += sorted(r.rglob("*.py"))
    return files


def corpus(max_tokens: int) -> tuple[list[list[str]], int]:
    """Lines of word tokens from the Python sources, up to max_tokens in all."""
    lines: list[list[str]] = []
    total = 0
    for f in python_sources():
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.splitlines():
            words = WORD_RE.findall(line.lower())
            if words:
                lines.append(words)
                total += len(words) + 1  # </s>
                if total >= max_tokens:
                    return lines, total
    return lines, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1e6,1e7", help="corpus sizes, comma-separated")
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--lmplz", default=None, help="KenLM's lmplz, to run at the largest size")
    args = ap.parse_args()
    sizes = sorted(int(float(x)) for x in args.tokens.split(","))
    lines, total = corpus(sizes[-1])
    counts = Counter(w for line in lines for w in line)
    vocab = ["<pad>", "<unk>", "<bos>", "<eos>"] + [w for w, _ in counts.most_common(VOCAB - 4)]
    index = {w: i for i, w in enumerate(vocab)}
    ids = [[index.get(w, 1) for w in line] + [3] for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            take, n = [], 0
            for seq in ids:
                if n >= size:
                    break
                take.append(seq)
                n += len(seq)
            path = Path(tmp) / f"c{size}.npz"
            np.savez(path, tokens=np.concatenate(take).astype(np.uint16 if len(vocab) < 65536
                                                             else np.int32),
                     offsets=np.cumsum([0] + [len(s) for s in take]))  # fmt: skip
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(args.order), str(len(vocab)),
                 str(ROOT)], capture_output=True, text=True, check=True,
            )  # fmt: skip
            rec = json.loads(out.stdout)
            per_token = rec["peak_growth_mib"] * 2**20 / n
            print(json.dumps({"bench": "ngram_estimate", "order": args.order, "tokens": n,
                              "sequences": len(take), "vocab": len(vocab),
                              "seconds": round(rec["seconds"], 3),
                              "peak_growth_mib": round(rec["peak_growth_mib"], 1),
                              "peak_mib": round(rec["peak_mib"], 1),
                              "bytes_per_token_at_peak": round(per_token, 1),
                              "ngrams": sum(rec["counts"]), "counts": rec["counts"],
                              "model_mib": round(rec["model_mib"], 1),
                              "tokens_per_s": round(n / rec["seconds"])}), flush=True)  # fmt: skip
        if args.lmplz:
            text = Path(tmp) / "text.txt"
            words = set(vocab)
            with text.open("w") as f:
                n = 0
                for line in lines:
                    if n >= sizes[-1]:
                        break
                    f.write(" ".join(w if w in words else "UNK" for w in line) + "\n")
                    n += len(line) + 1
            t0 = time.monotonic()
            with text.open() as fin:
                r = subprocess.run(["/usr/bin/time", "-v", args.lmplz, "-o", str(args.order),
                                    "-S", "4G", "-T", tmp], stdin=fin, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, check=True)  # fmt: skip
            peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
            print(json.dumps({"bench": "lmplz_estimate", "order": args.order, "tokens": n,
                              "seconds": round(time.monotonic() - t0, 2),
                              "peak_mib": round(int(peak.group(1)) / 1024, 1) if peak else None}),
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
