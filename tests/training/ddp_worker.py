"""Run by tests/training/test_distributed.py, alone or under torchrun.

    python ddp_worker.py CORPUS OUT DUMP BATCH_SIZE STEPS [--resume] [--mode MODE]

Trains a tiny model (MODE: stream, the default, sentence or bidirectional) and
records, after every optimizer step, the flattened weights and the largest
difference between any two ranks' copies.
Rank 0 writes them to DUMP (safetensors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from rnnlm.models.model import RNNLM
from rnnlm.training.train import TrainConfig, train


def main() -> None:
    corpus, out, dump, batch, steps = sys.argv[1:6]
    resume = "--resume" in sys.argv
    mode = sys.argv[sys.argv.index("--mode") + 1] if "--mode" in sys.argv else "stream"
    torch.set_num_threads(1)
    weights: dict[str, torch.Tensor] = {}
    diffs: dict[int, float] = {}

    def on_step(step: int, model: RNNLM) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        diff = 0.0
        if dist.is_initialized():
            copies = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(copies, flat)
            diff = max(float((c - copies[0]).abs().max()) for c in copies)
        weights[f"step{step}"] = flat.clone()
        diffs[step] = diff

    # fp32: the tests compare 2 ranks of 4 rows with 1 process of 8 to 2e-5, which only
    # fp32's rounding allows; bf16's (`auto` on a CPU with AMX) differs with the batch's
    # shape. `rnnlm train --nproc 2` with the defaults is test_cli_nproc_launches_torchrun.
    cfg = TrainConfig(
        mode="stream" if mode == "stream" else "sentence", bidirectional=mode == "bidirectional",
        hidden=24, embedding=12, layers=2, dropout=0.0, batch_size=int(batch),
        bptt=16, lr=1e-2, warmup=2, clip=0.5, max_steps=int(steps), eval_every=2, seed=7,
        precision="fp32",
    )  # fmt: skip
    given = {"max_steps"}  # as the CLI does for the flags it was given
    summary = train(cfg, Path(corpus), Path(out), resume, given, progress=False, on_step=on_step)
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_file(
            weights, dump, metadata={"diffs": json.dumps(diffs), "summary": json.dumps(summary)}
        )


if __name__ == "__main__":
    main()
