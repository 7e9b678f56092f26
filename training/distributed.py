"""Several processes under torchrun: who is rank 0, agreeing on rank 0's decisions,
and re-launching `rnnlm train` under torchrun (`--nproc`)."""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def log(msg: str) -> None:
    if is_main():
        tqdm.write(msg, file=sys.stderr)


def agree(flags: list[bool], dev: torch.device) -> list[bool]:
    """Rank 0's flags, on every rank."""
    if not dist.is_initialized():
        return flags
    t = torch.tensor([float(f) for f in flags], device=dev)
    dist.broadcast(t, src=0)
    return [bool(x) for x in t.tolist()]


def launch_distributed(argv: list[str], nproc: int) -> int:
    """Re-run this `rnnlm train` command under torchrun with `nproc` processes."""
    rest, skip = [], False
    for a in argv:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "rnnlm.cli", *rest]  # fmt: skip
    log(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} ...")
    return subprocess.run(cmd, check=False).returncode
