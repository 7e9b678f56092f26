"""The resumable trainer state in `<out>/latest/`: the checkpoint plus optimizer
moments, RNG state and the carried recurrent state (`trainer_state.safetensors`),
and the run's settings and counters (`trainer_state.json`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor

from rnnlm.models.checkpoint import (
    atomic_directory,
    load_checkpoint,
    recover,
    write_checkpoint_files,
    write_json,
)
from rnnlm.models.errors import RnnlmError
from rnnlm.models.model import RNNLM, State
from rnnlm.models.tokenizers import Tokenizer
from rnnlm.training.config import LIMIT_FIELDS, TrainConfig, TrainState


def save_latest(
    out: Path,
    model: RNNLM,
    tok: Tokenizer,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    st: TrainState,
    carried: State | None,
    meta: dict[str, Any],
) -> None:
    with atomic_directory(out / "latest") as tmp:
        write_checkpoint_files(tmp, model, tok, **meta)
        tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
        opt_sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, pstate in opt_sd["state"].items():
            for k, v in pstate.items():
                if isinstance(v, Tensor):
                    tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                elif v is not None:
                    scalars.setdefault(str(pid), {})[k] = v
        for i, s in enumerate(carried or ()):
            tensors[f"carried.{i}"] = s.detach().cpu().contiguous()
        save_file(tensors, str(tmp / "trainer_state.safetensors"))
        write_json(
            tmp / "trainer_state.json",
            {
                "config": asdict(cfg),
                "state": asdict(st),
                "param_groups": opt_sd["param_groups"],
                "optim_scalars": scalars,
                "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            },
        )


def load_latest(
    out: Path, model: RNNLM, opt: torch.optim.Optimizer, device: torch.device
) -> tuple[TrainState, State | None, int]:
    latest = recover(out / "latest")
    ck = load_checkpoint(latest, device=device)
    model.load_state_dict(ck.model.state_dict())
    try:
        saved = json.loads((latest / "trainer_state.json").read_text())
        tensors = load_file(str(latest / "trainer_state.safetensors"))
    except (OSError, ValueError) as e:
        raise RnnlmError(f"{latest}: trainer state is missing or broken ({e})") from e
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.to(device)
    for pid, extra in saved.get("optim_scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    carried_keys = sorted(k for k in tensors if k.startswith("carried."))
    carried = tuple(tensors[k].to(device) for k in carried_keys) or None
    return TrainState(**saved["state"]), carried, int(saved.get("world_size", 1))


def resume_config(out: Path, cfg: TrainConfig, given: set[str]) -> TrainConfig:
    path = recover(out / "latest") / "trainer_state.json"
    if not path.is_file():
        raise RnnlmError(f"{path}: nothing to resume (no trainer state in {out}/latest)")
    # A run saved before `precision` existed multiplied in fp32.
    saved = TrainConfig(**{"precision": "fp32", **json.loads(path.read_text())["config"]})
    for name in given:
        new, old = getattr(cfg, name), getattr(saved, name)
        if name in LIMIT_FIELDS and not (saved.residual and name.startswith("ngram")):
            setattr(saved, name, new)
        elif new != old:
            raise RnnlmError(
                f"--{name.replace('_', '-')} {new} differs from the run being resumed ({old}); "
                "only limits (steps, epochs, time budget, patience, saving) and the n-gram "
                "can change (not a residual model's n-gram: its RNN learnt that one's mistakes)"
            )
    return saved
