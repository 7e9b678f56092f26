"""Several processes under torchrun: who is rank 0, agreeing on rank 0's decisions,
and re-launching `rnnlm train` under torchrun (`--nproc`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from types import FrameType

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


def largest(n: int, dev: torch.device) -> int:
    """The largest of the ranks' `n` (a sentence batch's window count), on every rank."""
    if not dist.is_initialized():
        return n
    t = torch.tensor([n], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def launch_distributed(argv: list[str], nproc: int) -> int:
    """Re-run this `rnnlm train` command under torchrun with `nproc` processes.

    torchrun runs in a session of its own, so a terminal's Ctrl-C reaches this
    launcher alone, and the launcher passes it (or a SIGTERM) on once: torchrun sends
    SIGTERM to its workers, which finish the step in hand, save latest/ and stop, as
    one process does. A second signal kills them all. Without this, a SIGTERM to the
    launcher left torchrun and its workers training, orphaned.
    """
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
    proc = subprocess.Popen(cmd, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            proc.send_signal(signal.SIGTERM)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 130 if received else rc
