"""The machine's matrix-multiply rate, and training speed against it.

    python bench/speed.py gemm [--threads 1 2] [--seconds 3] [--dtype fp32 bf16]
    python bench/speed.py train CORPUS_DIR [--seconds 30] [--threads N]
        [--precision fp32|bf16|auto] [--gemm-gflops X]

`gemm`: torch.matmul of square matrices (n = 1024 and 2048) in float32 (and in
bfloat16 with `--dtype bf16`), each timed for about `--seconds` after a warm-up; the
best median rate over the sizes is the machine's peak for that many threads and that
type. One JSON object per thread count and type.

`train`: the training step of `rnnlm train`'s default configuration for the
corpus (what `TrainConfig.resolve` picks, written into the record's `config`: for
a word corpus today a 2x256 LSTM with tied 256-d embeddings, a full softmax,
sentence mode, batch 20, BPTT 35, SGD, clip 0.25), on the corpus's own length-sorted
batches, timed for `--seconds` after 5 warm-up steps, without evaluation or
checkpointing, in the precision `rnnlm train --precision` would use (default
`auto`: bf16 autocast where the CPU multiplies bfloat16 natively, as
training/precision.py decides), each step training/train.py's own `train_step`.
Tokens are the real (non-padding) targets. FLOPs per token come from the layer
sizes (bench/flops.py; training = 3 x forward); the share of peak is FLOPs/token x
tokens/s over the GEMM rate in the step's precision, measured here with the same
threads (or `--gemm-gflops`, which must be that precision's).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnlm.training.precision import PRECISIONS, uses_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def measure_gemm(
    threads: int, seconds: float, sizes: tuple[int, ...] = (1024, 2048), dtype: str = "fp32"
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    best: dict[str, Any] = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=DTYPES[dtype]), torch.randn(n, n, dtype=DTYPES[dtype])
        for _ in range(2):
            torch.matmul(a, b)
        times: list[float] = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t0)
        rate = 2 * n**3 / statistics.median(times) / 1e9
        if rate > best.get("gflops", 0.0):
            best = {"n": n, "gflops": round(rate, 2), "repeats": len(times)}
    name = str(DTYPES[dtype]).removeprefix("torch.")  # float32, bfloat16
    return {"bench": "gemm", "dtype": name, "threads": threads, **best}


def train_speed(
    corpus: Path,
    seconds: float,
    threads: int,
    gemm_gflops: float | None,
    precision: str = "auto",
) -> dict[str, Any]:
    from rnnlm.models.model import RNNLM
    from rnnlm.training.corpus import TokenSplit, load_corpus_tokenizer, read_corpus_meta
    from rnnlm.training.data import sentence_batches, sentence_windows
    from rnnlm.training.train import LossModule, TrainConfig, make_optimizer, train_step

    torch.set_num_threads(threads)
    bf16 = uses_bf16(precision, torch.device("cpu"))  # the choice `rnnlm train` makes
    meta = read_corpus_meta(corpus)
    tok = load_corpus_tokenizer(corpus)
    cfg = TrainConfig().resolve(meta["tokenizer"]["kind"], tok.vocab_size, bf16)
    assert cfg.bptt is not None and cfg.batch_size is not None and cfg.clip is not None
    bptt, batch_size, clip = cfg.bptt, cfg.batch_size, cfg.clip
    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model_config(tok.vocab_size)
    model = RNNLM(model_cfg)
    net = LossModule(model).train()
    opt = make_optimizer(cfg, model)  # the default's (SGD for words)
    split = TokenSplit(corpus, "train")
    model_dict = model_cfg.to_dict()
    tails = flops.tail_fractions(model_dict, np.asarray(split.tokens).tolist())
    fwd = flops.forward_flops(model_dict, tails)
    per_token = flops.TRAIN_FACTOR * fwd["total"]

    def windows_forever() -> Iterator[tuple[Tensor, Tensor, bool]]:
        """(inputs, targets, fresh): a batch's later windows carry its state, as in training."""
        epoch = 0
        while True:
            for idx in sentence_batches(split, batch_size, epoch, cfg.seed):
                for k, (inp, tgt) in enumerate(sentence_windows(split, idx, bptt)[1]):
                    yield inp, tgt, k == 0
            epoch += 1

    tokens = positions = n_steps = 0
    warmup = 5
    t0 = time.perf_counter()
    state: tuple[Tensor, ...] | None = None
    for i, (inp, tgt, fresh) in enumerate(windows_forever()):
        if i == warmup:
            t0 = time.perf_counter()
        window = (inp, tgt, None if fresh else state, None)
        _, n_t, _, state = train_step(net, model, opt, window, bf16, clip)  # training's own
        if i >= warmup:
            tokens += int(n_t)
            positions += inp.numel()
            n_steps += 1
            if time.perf_counter() - t0 >= seconds:
                break
    elapsed = time.perf_counter() - t0
    tps = tokens / elapsed
    if gemm_gflops is None:
        gemm_gflops = measure_gemm(threads, 2.0, dtype="bf16" if bf16 else "fp32")["gflops"]
        torch.set_num_threads(threads)
    achieved = per_token * tps / 1e9
    return {
        "bench": "train_speed",
        "corpus": str(corpus),
        "threads": threads,
        "precision": "bf16" if bf16 else "fp32",
        "config": {
            "mode": cfg.mode,
            "cell": model_cfg.cell,
            "layers": model_cfg.layers,
            "hidden": model_cfg.hidden,
            "embedding": model_cfg.embedding,
            "vocab_size": model_cfg.vocab_size,
            "adaptive_cutoffs": model_cfg.adaptive_cutoffs,
            "tied": model_cfg.tied,
            "batch_size": cfg.batch_size,
            "bptt": cfg.bptt,
            "optimizer": cfg.optimizer,
        },
        "parameters": model.num_parameters(),
        "steps": n_steps,
        "seconds": round(elapsed, 2),
        "tokens": tokens,
        "tokens_per_s": round(tps, 1),
        "padding_share": round(1 - tokens / max(1, positions), 4),
        "tail_cluster_shares": [round(p, 4) for p in tails],
        "forward_flops_per_token": {k: round(v) for k, v in fwd.items()},
        "train_flops_per_token": round(per_token),
        "flops_formula": flops.FORMULA,
        "achieved_gflops": round(achieved, 3),
        "gemm_gflops": gemm_gflops,
        "pct_of_gemm_peak": round(100 * achieved / gemm_gflops, 2) if gemm_gflops else math.nan,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gemm", help="matmul GFLOP/s")
    g.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    g.add_argument("--seconds", type=float, default=3.0, help="per matrix size")
    g.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32"])
    t = sub.add_parser("train", help="training tokens/s and share of GEMM peak")
    t.add_argument("corpus", type=Path, help="directory written by `rnnlm corpus`")
    t.add_argument("--seconds", type=float, default=30.0)
    t.add_argument("--threads", type=int, default=torch.get_num_threads())
    t.add_argument("--precision", choices=PRECISIONS, default="auto")
    t.add_argument(
        "--gemm-gflops",
        type=float,
        default=None,
        help="the GEMM rate in the step's precision (default: measure it)",
    )
    args = p.parse_args()
    if args.what == "gemm":
        for dtype in dict.fromkeys(args.dtype):
            for n in dict.fromkeys(args.threads):
                print(json.dumps(measure_gemm(n, args.seconds, dtype=dtype)), flush=True)
    else:
        row = train_speed(args.corpus, args.seconds, args.threads, args.gemm_gflops, args.precision)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
