"""A corpus bigger than the memory a process may use: built streamed, trained memory-mapped."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

HEADROOM_MB = 24
# Runs in a child process. First a warm-up: the same commands on a corpus a tenth
# the size, so that everything a library reserves once (BLAS work buffers, which
# depend on the CPU, allocator arenas, lazily imported modules) is already held.
# Then the heap (RLIMIT_DATA: private writable memory, which file-backed memory
# maps do not count against) is capped at what the process holds plus
# HEADROOM_MB, and the commands run again on the big corpus. The cap is thus set
# by this machine's own libraries, and what the test measures is only what the
# commands add when the corpus grows tenfold.
CHILD = """
import json, resource, sys
from pathlib import Path
import numpy as np, torch
from rnnlm.cli import main
from rnnlm.training.corpus import TokenSplit
torch.set_num_threads(1)
# oneDNN caches a compiled kernel per input shape (up to 1024 of them, ~100 MB
# here): a bounded cache, not corpus data, so it is kept out of this measurement.
torch.backends.mkldnn.enabled = False
warmup, measured, split = json.loads(sys.argv[1])
for argv in warmup:
    if main(argv):
        sys.exit("warm-up failed: " + " ".join(argv))
used = int(open("/proc/self/status").read().split("VmData:")[1].split()[0]) * 1024
cap = used + {headroom} * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
for argv in measured:
    rc = main(argv)
    if rc:
        sys.exit(rc)
# The cap bites: reading the big split into private memory fails where the commands did not.
try:
    whole = np.array(TokenSplit(Path(split), "train").tokens)
except MemoryError:
    print("MemoryError", flush=True)
else:
    print("loaded", whole.nbytes, flush=True)
"""


def _write_corpus(path: Path, chars: int, words: list[str], rng: random.Random) -> None:
    with path.open("w") as f:
        size = 0
        while size < chars:
            line = " ".join(rng.choices(words, k=rng.randint(4, 16))) + "\n"
            f.write(line)
            size += len(line)


def _commands(text: Path, corpus: Path, run: Path) -> list[list[str]]:
    # No n-gram: its estimation counts in memory (about 40 bytes per training token);
    # what is tested here is that the recurrent model trains from the memory map.
    tiny = ["--hidden", "16", "--embedding", "8", "--layers", "1", "--batch-size", "8",
            "--bptt", "32", "--max-steps", "6", "--eval-every", "3", "--no-progress",
            "--ngram-order", "0"]  # fmt: skip
    return [
        ["corpus", str(text), "--out", str(corpus)],
        ["train", "--corpus", str(corpus), "--out", str(run / "s"), *tiny],
        ["train", "--corpus", str(corpus), "--out", str(run / "t"), "--mode", "stream", *tiny],
    ]


@pytest.mark.timeout(600)
def test_corpus_larger_than_the_memory_cap_builds_and_trains(tmp_path: Path):
    rng = random.Random(3)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(300)
    ]
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    _write_corpus(small, 2_000_000, words, rng)
    _write_corpus(big, 20_000_000, words, rng)  # 20M characters: 36 MB of uint16 ids in train
    corpus = tmp_path / "corpus"
    warmup = _commands(small, tmp_path / "small-corpus", tmp_path / "small-run")
    measured = _commands(big, corpus, tmp_path / "run")
    r = subprocess.run(
        [sys.executable, "-c", CHILD.format(headroom=HEADROOM_MB),
         json.dumps([warmup, measured, str(corpus)])],
        capture_output=True, text=True, timeout=600,
        # One BLAS thread: its buffers are per thread, and the thread count per machine.
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    train_bytes = (corpus / "train.bin").stat().st_size
    assert train_bytes > 1.4 * HEADROOM_MB * 2**20  # the split alone is well over the headroom
    assert r.stdout.strip().splitlines()[-1] == "MemoryError", r.stdout[-2000:] + r.stderr[-2000:]
    for mode in ("s", "t"):
        assert json.loads((tmp_path / "run" / mode / "summary.json").read_text())["steps"] == 6
