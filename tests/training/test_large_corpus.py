"""A corpus bigger than the memory a process may use: built streamed, trained memory-mapped."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

HEADROOM_MB = 32
# Runs in a child process: cap the heap (RLIMIT_DATA: private writable memory,
# which file-backed memory maps do not count against) at what the imports
# already use plus HEADROOM_MB, then run the given rnnlm commands.
CHILD = """
import json, resource, sys
# What the commands import lazily (the optimizer, the plot) is imported before the cap.
import numpy as np, torch, torch._dynamo, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
from rnnlm.cli import main
from training.corpus import TokenSplit
torch.set_num_threads(1)
# oneDNN caches a compiled kernel per input shape (up to 1024 of them, ~100 MB
# here): a bounded cache, not corpus data, so it is kept out of this measurement.
torch.backends.mkldnn.enabled = False
# BLAS allocates its work buffers on first use: use it once before the cap.
np.ones((64, 64)) @ np.ones((64, 64))
lstm = torch.nn.LSTM(8, 16, batch_first=True)
torch.optim.AdamW(lstm.parameters()).zero_grad()
lstm(torch.ones(8, 32, 8))[0].sum().backward()
used = int(open("/proc/self/status").read().split("VmData:")[1].split()[0]) * 1024
cap = used + {headroom} * 2**20
resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
for argv in json.loads(sys.argv[1]):
    if argv == ["load-whole-split"]:
        try:
            whole = np.array(TokenSplit(__import__("pathlib").Path(sys.argv[2]), "train").tokens)
        except MemoryError:
            print("MemoryError", flush=True)
            continue
        print("loaded", whole.nbytes, flush=True)
        continue
    rc = main(argv)
    if rc:
        sys.exit(rc)
"""


def _child(commands: list[list[str]], corpus: Path) -> subprocess.CompletedProcess[str]:
    script = CHILD.format(headroom=HEADROOM_MB)
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(commands), str(corpus)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_corpus_larger_than_the_memory_cap_builds_and_trains(tmp_path: Path):
    rng = random.Random(3)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(300)
    ]
    text = tmp_path / "big.txt"
    with text.open("w") as f:
        size = 0
        while size < 20_000_000:  # 20M characters: 36 MB of uint16 token ids (90% in train)
            line = " ".join(rng.choices(words, k=rng.randint(4, 16))) + "\n"
            f.write(line)
            size += len(line)
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    tiny = ["--hidden", "16", "--embedding", "8", "--layers", "1", "--batch-size", "8",
            "--bptt", "32", "--max-steps", "6", "--eval-every", "3", "--no-progress"]  # fmt: skip
    for command in (
        ["corpus", str(text), "--out", str(corpus)],
        ["train", "--corpus", str(corpus), "--out", str(run / "s"), *tiny],
        ["train", "--corpus", str(corpus), "--out", str(run / "t"), "--mode", "stream", *tiny],
    ):
        r = _child([command], corpus)
        assert r.returncode == 0, r.stderr[-3000:]
    train_bytes = (corpus / "train.bin").stat().st_size
    assert train_bytes > HEADROOM_MB * 2**20  # the split alone is bigger than the headroom
    # The cap bites: reading the split into memory fails, where the commands did not.
    r = _child([["load-whole-split"]], corpus)
    assert r.stdout.strip() == "MemoryError", r.stdout + r.stderr[-2000:]
    for mode in ("s", "t"):
        assert json.loads((run / mode / "summary.json").read_text())["steps"] == 6
