"""A checkpoint loaded for the Python API: its engine, its lock, its beam-search states.

One `Loaded` is shared by a `LanguageModel` and its one-part views (rnnlm/lm.py). Its
lock guards everything that touches the engine (whose decoding step computes in place)
and the state table (models/states.py).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnnlm.models.checkpoint import fingerprint, load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import CheckpointError
from rnnlm.models.states import StateTable


@dataclass(eq=False)
class Loaded:
    """What a model and its one-part views share."""

    path: Path
    device: str
    fingerprint: str
    engine: Engine
    lock: threading.Lock = field(default_factory=threading.Lock)
    _table: StateTable | None = None

    @property
    def states(self) -> StateTable:
        """The beam-search state table, made on first use (hold `lock`)."""
        if self._table is None:
            self._table = StateTable(self.engine)
        return self._table


# Every loaded model, so that a forked child gets fresh locks: a lock held by another
# thread of the parent at the fork would stay held in the child for ever.
_LIVE: weakref.WeakSet[Loaded] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for loaded in list(_LIVE):
        loaded.lock = threading.Lock()
    # torch's CPU wheel runs its threads with GNU OpenMP, whose pool does not survive a
    # fork: the child's first parallel op waits for ever on the parent's threads (seen
    # here: a forked pool worker hung building its engine). On one thread torch never
    # enters the pool; a pool of processes is the parallelism then, as in torch's own
    # DataLoader workers.
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=_after_fork_in_child)


def load_model(path: Path, device: str, expected: str | None) -> Loaded:
    """Load `path`; with `expected`, refuse it unless its fingerprint is that one."""
    digest = fingerprint(path)
    if expected is not None and digest != expected:
        raise CheckpointError(
            f"{path}: the checkpoint changed on disk since this model was pickled "
            "(its fingerprint differs): load it again"
        )
    engine = Engine(load_checkpoint(path, device=torch.device(device)))
    loaded = Loaded(path.resolve(), device, digest, engine)
    _LIVE.add(loaded)
    return loaded
