"""`rnnlm train`: a flat training loop.

Defaults sit in `TrainConfig` at the top; `resolve()` fills the ones that
depend on the corpus (tokenizer kind, vocabulary size). One optimizer step per
window of at most `bptt` tokens. The run directory holds:

    <out>/best/      checkpoint with the best validation perplexity
    <out>/latest/    checkpoint + trainer_state.{json,safetensors}: resumable
    <out>/metrics.jsonl   one line per evaluation
    <out>/curve.png       training and validation loss

`bidirectional` trains a forward and a backward model together (ELMo's biLM,
models/model.py): each batch carries its rows reversed below them, the loss is
the mean of the two directions' NLL, and metrics.jsonl reports the forward
numbers under the usual names (`valid_ppl`) and the backward ones beside them
(`valid_ppl_backward`); best/ is the lowest mean of the two validation losses.

Under `torchrun` (WORLD_SIZE > 1) the same loop runs under
DistributedDataParallel; only rank 0 evaluates, writes and prints, and it
broadcasts when to stop, so every rank takes the same number of steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from rnnlm.models.checkpoint import (
    atomic_directory,
    load_checkpoint,
    read_config,
    start_token,
    write_checkpoint_files,
    write_json,
)
from rnnlm.models.errors import RnnlmError
from rnnlm.models.model import RNNLM, State
from rnnlm.models.ngram import NgramModel
from rnnlm.models.tokenizers import PAD, Tokenizer
from rnnlm.training.config import TrainConfig, TrainState, default_ngram_order
from rnnlm.training.corpus import TokenSplit, load_corpus_tokenizer, read_corpus_meta
from rnnlm.training.data import (
    sentence_batches,
    sentence_windows,
    stream_lanes,
    stream_window,
    windows,
    with_backward_rows,
)
from rnnlm.training.distributed import agree, is_main, largest, launch_distributed, log
from rnnlm.training.mixture import attach_ngram, build_ngram
from rnnlm.training.objective import LossModule, evaluate_split
from rnnlm.training.plot import plot_curve
from rnnlm.training.precision import uses_bf16
from rnnlm.training.prior import fold_priors, with_prior
from rnnlm.training.state import load_latest, resume_config, save_latest

__all__ = [
    "LossModule",
    "TrainConfig",
    "learning_rate",
    "make_optimizer",
    "train",
    "train_command",
    "train_step",
]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer: SGD or AdamW at the resolved rate and weight decay."""
    assert cfg.lr is not None and cfg.weight_decay is not None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _progress(cfg: TrainConfig, st: TrainState, units_per_epoch: int) -> float:
    """Fraction of the run done, by whichever limit comes first."""
    p = 0.0
    if cfg.max_steps:
        p = max(p, st.step / cfg.max_steps)
    if cfg.time_budget:
        p = max(p, st.elapsed / cfg.time_budget)
    if cfg.epochs:
        p = max(p, (st.epoch + st.unit / max(1, units_per_epoch)) / cfg.epochs)
    return min(1.0, p)


def learning_rate(cfg: TrainConfig, st: TrainState, units_per_epoch: int) -> float:
    """The rate at this step: warm-up, then the schedule (cosine by the run's progress,
    plateau cuts, or constant)."""
    assert cfg.lr is not None
    warm = min(1.0, (st.step + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.schedule == "cosine":
        p = _progress(cfg, st, units_per_epoch)
        return cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))
    if cfg.schedule == "plateau":
        return cfg.lr * warm * st.lr_scale
    return cfg.lr * warm


# ---------------------------------------------------------- trainer state


# ------------------------------------------------------------------- loop


# (inputs, targets, a residual model's prior or None) per BPTT window.
Windows = Iterator[tuple[Tensor, Tensor, Tensor | None]]


def _units(
    cfg: TrainConfig,
    split: TokenSplit,
    epoch: int,
    start: int,
    rank: int,
    world: int,
    first_window: int,
    dev: torch.device,
    prior: Any = None,
) -> Iterator[tuple[int, Windows, bool]]:
    """This epoch's units from unit `start` (its windows from `first_window`):
    (windows in the unit, the windows, fresh_state) per batch or stream window; with a
    residual model's `prior` table (training/prior.py), each window's prior beside it."""
    assert cfg.bptt is not None and cfg.batch_size is not None
    if cfg.mode == "sentence":
        batches = sentence_batches(split, cfg.batch_size, epoch, cfg.seed, rank, world)
        for k, idx in enumerate(batches[start:]):
            first = first_window if k == 0 else 0
            if cfg.bidirectional:
                # The reversed rows need each whole row: this batch is built at once.
                _, whole = sentence_windows(split, idx, sys.maxsize)  # one window (B, T)
                inp, tgt = with_backward_rows(*next(whole))  # (2B, T)
                cut = [(i, t, None) for i, t in windows(inp, tgt, cfg.bptt)]
                yield _in_step(len(cut), iter(cut[first:]), first, len(inp), dev)
            else:
                n, lazy = sentence_windows(split, idx, cfg.bptt, first)
                wins = with_prior(lazy, prior, split, idx, cfg.bptt, first)
                yield _in_step(n, wins, first, len(idx), dev)
    else:
        lane = stream_lanes(split, cfg.batch_size, rank, world)
        for k in range(start, _units_per_epoch(cfg, split, world)):
            inp, tgt = stream_window(split, cfg.batch_size, k * cfg.bptt, cfg.bptt, rank, world)
            yield 1, iter([(inp, tgt, None)]), k == 0 and lane > 0


def _in_step(
    n: int, wins: Windows, first: int, rows: int, dev: torch.device
) -> tuple[int, Windows, bool]:
    """A sentence batch's windows, as many on every rank as the longest batch has.

    Under DDP the ranks' batches differ in length, so in their number of BPTT windows,
    and every window is a step of collectives (the token count, DDP's gradient
    all-reduce, the stop flags) that all ranks must make together. A rank whose batch
    ends first runs padding windows, (rows, 1) of <pad>: no target counts, so its loss
    and gradient are zero, and the step's mean is over the other ranks' tokens.
    """
    n_all = largest(n, dev)
    pad = torch.full((rows, 1), PAD, dtype=torch.long)
    padding = ((pad, pad, None) for _ in range(n_all - max(n, first)))
    return n_all, itertools.chain(wins, padding), True


def train_step(
    net: nn.Module,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    window: tuple[Tensor, Tensor, State | None, Tensor | None],
    bf16: bool,
    clip: float,
    world: int = 1,
) -> tuple[Tensor, Tensor, Tensor, State]:
    """One optimizer step on one window (inputs, targets (B, T), the state carried in,
    a residual model's prior): the forward under bf16 autocast where `bf16`
    (training/precision.py), the loss, the gradients clipped to `clip` (0: not), the
    step. `net` is `model`'s LossModule, DDP-wrapped when `world` > 1. Returns the NLL
    summed per direction (directions,), detached, the tokens predicted here and in the
    global batch, and the state after the window, detached and in float32 (bf16's
    carried on in float32). bench/speed.py times this same step."""
    inp, tgt, state, prior = window
    with torch.autocast(inp.device.type, torch.bfloat16, enabled=bf16):
        nll, n_t, new_state = net(inp, tgt, state, prior)  # nll (directions,)
    total = n_t
    if world > 1:
        total = n_t.detach().clone()
        dist.all_reduce(total)  # tokens in the global batch
    # The mean over every token of the global batch (and over the two directions, which
    # predict as many tokens each); DDP averages the ranks' gradients, hence `world`.
    loss = nll.mean() * world / total.clamp(min=1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return nll.detach(), n_t, total, tuple(s.detach().float() for s in new_state)


def _limit(cfg: TrainConfig, st: TrainState, epoch_end: bool) -> str:
    """Which limit of the run is reached, if any."""
    if cfg.max_steps and st.step >= cfg.max_steps:
        return "max_steps"
    if cfg.time_budget and st.elapsed >= cfg.time_budget:
        return "time_budget"
    if cfg.epochs and epoch_end and st.epoch + 1 >= cfg.epochs:
        return "epochs"
    return ""


def _units_per_epoch(cfg: TrainConfig, split: TokenSplit, world: int) -> int:
    assert cfg.bptt is not None and cfg.batch_size is not None
    if cfg.mode == "sentence":
        n = math.ceil(len(split) / cfg.batch_size)
        return n // world if world > 1 else n
    return math.ceil(stream_lanes(split, cfg.batch_size, 0, world) / cfg.bptt)


def train(
    cfg: TrainConfig,
    corpus: Path,
    out: Path,
    resume: bool = False,
    given: set[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, RNNLM], None] | None = None,
) -> dict[str, Any]:
    """Train; returns the run summary (also printed by the CLI).

    `on_step(step, model)` runs after every optimizer step, on every rank. Under
    torchrun the process group this starts is destroyed before it returns: a
    process that exits with one still up can abort in gloo's threads
    ("terminate called without an active exception"), as rank 1 did on one core.
    """
    owns_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    try:
        return _train(cfg, corpus, out, resume, given, device, progress, on_step)
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    corpus: Path,
    out: Path,
    resume: bool,
    given: set[str] | None,
    device: str,
    progress: bool,
    on_step: Callable[[int, RNNLM], None] | None,
) -> dict[str, Any]:
    meta = read_corpus_meta(corpus)
    tok = load_corpus_tokenizer(corpus)
    if resume:
        cfg = resume_config(out, cfg, given or set())
        if cfg.ngram_order is None:  # a run from before the n-gram existed
            cfg.ngram_order = default_ngram_order(meta["tokenizer"]["kind"])
    else:
        # The defaults depend on whether the steps will run in bf16 (training/precision.py).
        bf16_steps = uses_bf16(cfg.precision, torch.device(device))
        cfg.resolve(meta["tokenizer"]["kind"], tok.vocab_size, bf16_steps)
        if (out / "latest").exists() or (out / "best").exists():
            raise RnnlmError(f"{out}: already holds a run; use --resume, or another --out")
    if cfg.residual and (
        cfg.mode != "sentence" or not cfg.ngram_order or cfg.ngram_arpa or cfg.bidirectional
    ):
        raise RnnlmError(
            "--residual trains the RNN over an n-gram estimated here from each fold of the "
            "training sentences: it needs --mode sentence, an --ngram-order above 0, no "
            "--ngram-arpa and no --bidirectional"
        )
    if cfg.bidirectional and cfg.mode == "stream":
        raise RnnlmError(
            "--bidirectional needs --mode sentence: the backward model reads each sequence "
            "from its end, and stream mode has no sequence ends: it reads one long text in "
            "windows that start from the state the text before them left, while a backward "
            "window would need the state of the text after it"
        )
    splits = {s: TokenSplit(corpus, s) for s in ("train", "valid", "test")}
    train_split = splits["train"]
    if len(train_split) == 0:
        raise RnnlmError(f"{corpus}: the training split is empty")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
    assert cfg.batch_size is not None and cfg.clip is not None  # resolved
    if cfg.mode == "stream" and stream_lanes(train_split, cfg.batch_size, 0, world) < 2:
        raise RnnlmError(
            f"{corpus}: {len(train_split.tokens)} training tokens are too few for "
            f"--batch-size {cfg.batch_size} in stream mode"
        )
    torch.manual_seed(cfg.seed)
    try:
        model_cfg = cfg.model_config(tok.vocab_size)
    except ValueError as e:  # e.g. a corpus whose vocabulary is the special tokens alone
        raise RnnlmError(f"{corpus}: no model can be built for this corpus ({e})") from None
    model = RNNLM(model_cfg).to(dev)
    opt = make_optimizer(cfg, model)
    # The step's products (training/precision.py); `auto` recorded as what it chose, so a
    # resumed run multiplies as it began, on whatever machine it resumes.
    bf16 = uses_bf16(cfg.precision, dev)
    cfg.precision = "bf16" if bf16 else "fp32"
    # A residual model trains over priors from n-grams without each fold, and is saved
    # and validated with the n-gram of the whole split (training/prior.py); the time
    # this takes counts in the time budget.
    t_setup = time.monotonic()
    ngram: NgramModel | None = None
    ngram_info: dict[str, Any] = {}
    prior = None
    if cfg.residual:
        assert cfg.ngram_order
        ngram, ngram_info = build_ngram(tok, corpus, cfg.mode, cfg.ngram_order, note=log)
        prior = fold_priors(
            train_split, cfg.ngram_order, tok.vocab_size, start_token(cfg.mode), note=log
        )
    setup_s = time.monotonic() - t_setup
    st, carried = TrainState(), None
    if resume:
        st, carried, saved_world = load_latest(out, model, opt, dev)
        if saved_world != world:
            raise RnnlmError(
                f"{out}: the run was trained by {saved_world} process(es), not {world}; "
                "resume it with the same number (each rank's data shard depends on it)"
            )
        if rank > 0:
            carried = None  # the saved stream state is rank 0's lanes'; others restart theirs
        log(f"resuming at step {st.step} (epoch {st.epoch}, unit {st.unit})")
    if world > 1 and rank > 0:
        # Same initial weights everywhere (DDP also broadcasts rank 0's), but each
        # rank draws its own dropout masks.
        torch.manual_seed(cfg.seed + 1_000_003 * rank + st.step)
    net: nn.Module = LossModule(model)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    run_meta = {"corpus": str(corpus), "mode": cfg.mode, "config": asdict(cfg)}
    units_per_epoch = _units_per_epoch(cfg, train_split, world)
    if units_per_epoch == 0:
        raise RnnlmError(f"{corpus}: too little training data for --batch-size {cfg.batch_size}")
    log(
        f"model: {model_cfg.cell} {model_cfg.layers}x{model_cfg.hidden}"
        f"{' bidirectional' if model_cfg.bidirectional else ''}, "
        f"{model.num_parameters():,} parameters, vocabulary {tok.vocab_size}; "
        f"{units_per_epoch} {'batches' if cfg.mode == 'sentence' else 'windows'} per epoch; "
        f"{'bf16' if bf16 else 'fp32'} steps"
    )

    def meta_now(metrics: dict[str, Any]) -> dict[str, Any]:
        """What every checkpoint written during the run holds besides the weights: a
        residual model's n-gram too (it predicts nothing without it), λ = 1 until
        the end of the run fits it."""
        meta: dict[str, Any] = {
            "training": {**run_meta, "step": st.step, "epoch": st.epoch, "elapsed_s": st.elapsed},
            "metrics": metrics,
        }
        if ngram is not None:
            info = {**ngram_info, "lambda": 1.0, "lambda_from": "the run (not fit yet)"}
            meta |= {"ngram": ngram, "ngram_info": info}
        return meta

    # Ctrl-C / SIGTERM: finish the step in hand, save latest, stop.
    stop_signal: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_signal.append(signum)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    bar = tqdm(
        total=cfg.max_steps or (units_per_epoch * cfg.epochs if cfg.epochs else None),
        initial=st.step,
        disable=not progress or not is_main(),
        unit="step",
        dynamic_ncols=True,
    )
    t_start = time.monotonic() - st.elapsed - setup_s
    # Training NLL since the last evaluation, per direction (forward, [backward]).
    train_nll, train_n, window_tokens, window_t0 = [0.0, 0.0], 0, 0, time.monotonic()
    last_metrics: dict[str, Any] = {}
    # A resumed run may have reached its limits already (killed while finishing).
    stopped = ""
    if resume:
        stopped = _limit(cfg, st, st.unit >= units_per_epoch)
        stopped = stopped or ("early_stopping" if st.bad_evals >= cfg.patience else "")
    net.train()
    while not stopped:
        units = _units(cfg, train_split, st.epoch, st.unit, rank, world, st.window, dev, prior)
        for n_wins, wins, fresh in units:
            # Resuming inside a unit (a long sequence's batch): its state was saved.
            state = carried if st.window or not fresh else None
            skip = st.window
            for inp, tgt, prior_win in wins:
                inp, tgt = inp.to(dev), tgt.to(dev)
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, st, units_per_epoch)
                win_prior = None if prior_win is None else prior_win.to(dev)
                nll, n_t, total, state = train_step(
                    net, model, opt, (inp, tgt, state, win_prior), bf16, cfg.clip, world
                )
                n = int(n_t)
                for d, v in enumerate(nll.tolist()):
                    train_nll[d] += v
                train_n += n
                window_tokens += n
                st.step += 1
                st.tokens += int(total)
                st.window += 1
                if on_step is not None:
                    on_step(st.step, model)
                if st.window < n_wins:  # inside a long batch: limits and signals hold too
                    st.elapsed = time.monotonic() - t_start
                    if agree([bool(_limit(cfg, st, False) or stop_signal)], dev)[0]:
                        break
            done_here = st.window - skip
            unit_done = st.window >= n_wins
            if unit_done:
                carried = state if cfg.mode == "stream" else None
                st.unit += 1
                st.window = 0
            else:
                carried = state  # to go on with this unit on resume
            st.elapsed = time.monotonic() - t_start
            bar.update(done_here)
            if train_n and st.step % 10 == 0:
                tps = window_tokens * world / max(1e-9, time.monotonic() - window_t0)
                bar.set_postfix(
                    loss=f"{train_nll[0] / train_n:.3f}",
                    ppl=f"{math.exp(min(50.0, train_nll[0] / train_n)):.1f}",
                    tok_s=f"{tps:,.0f}",
                    refresh=False,
                )
            # Decide together: rank 0's clock and evaluation rule for everyone.
            epoch_end = unit_done and st.unit >= units_per_epoch
            due_eval = unit_done and (
                (cfg.eval_every is not None and st.step - st.last_eval_step >= cfg.eval_every)
                or (
                    cfg.eval_every is None
                    and (
                        (cfg.time_budget and st.elapsed - st.last_eval_time >= cfg.time_budget / 10)
                        or (not cfg.time_budget and epoch_end)
                    )
                )
            )
            limit = _limit(cfg, st, epoch_end) or ("interrupted" if stop_signal else "")
            flags = agree([bool(due_eval or limit), bool(limit), bool(stop_signal)], dev)
            if flags[0]:
                tps = window_tokens * world / max(1e-9, time.monotonic() - window_t0)
                last_metrics = _evaluate_and_save(
                    out,
                    model,
                    tok,
                    opt,
                    cfg,
                    st,
                    carried,
                    splits,
                    train_nll,
                    train_n,
                    tps,
                    meta_now,
                    ngram,
                )
                bar.set_postfix(
                    valid_ppl=f"{last_metrics.get('valid_ppl') or float('nan'):.2f}", refresh=True
                )
                train_nll, train_n, window_tokens, window_t0 = [0.0, 0.0], 0, 0, time.monotonic()
                if agree([st.bad_evals >= cfg.patience], dev)[0]:
                    limit = limit or "early_stopping"
            elif (
                cfg.save_every and unit_done and st.step % cfg.save_every < done_here and is_main()
            ):
                save_latest(out, model, tok, opt, cfg, st, carried, meta_now(last_metrics))
            if flags[1] or flags[2] or limit:
                stopped = limit or "interrupted"
                break
            if epoch_end:
                break
        if not stopped:
            st.epoch += 1
            st.unit = 0
            carried = None
    bar.close()
    for s, h in old_handlers.items():
        signal.signal(s, h)
    built = None if ngram is None else (ngram, ngram_info)
    summary = _finish(out, corpus, tok, cfg, st, splits, stopped, last_metrics, dev, built)
    if cfg.residual:
        summary["residual_setup_s"] = round(setup_s, 1)
    if dist.is_initialized():
        dist.barrier()
    return summary


def _evaluate_and_save(
    out: Path,
    model: RNNLM,
    tok: Tokenizer,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    st: TrainState,
    carried: State | None,
    splits: dict[str, TokenSplit],
    train_nll: list[float],
    train_n: int,
    tokens_per_s: float,
    meta_now: Any,
    ngram: NgramModel | None = None,
) -> dict[str, Any]:
    st.last_eval_step, st.last_eval_time = st.step, st.elapsed
    metrics: dict[str, Any] = {}
    if is_main():
        valid_loss = valid_loss_b = None
        if len(splits["valid"]):
            nll, n = evaluate_split(
                model, tok, splits["valid"], cfg.mode, cfg.max_eval_tokens, ngram=ngram
            )
            valid_loss = nll / n
            if cfg.bidirectional:
                nll, n = evaluate_split(
                    model, tok, splits["valid"], cfg.mode, cfg.max_eval_tokens, backward=True
                )
                valid_loss_b = nll / n
        train_loss = train_nll[0] / train_n if train_n else None
        metrics = {
            "step": st.step,
            "epoch": st.epoch + st.unit / max(1, _units_per_epoch(cfg, splits["train"], 1)),
            "elapsed_s": round(st.elapsed, 2),
            "lr": opt.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_ppl": math.exp(min(50.0, train_loss)) if train_loss is not None else None,
            "valid_loss": valid_loss,
            "valid_ppl": math.exp(min(50.0, valid_loss)) if valid_loss is not None else None,
            "tokens_per_s": round(tokens_per_s, 1),
        }
        if cfg.bidirectional:
            train_loss_b = train_nll[1] / train_n if train_n else None
            metrics |= {
                "train_loss_backward": train_loss_b,
                "valid_loss_backward": valid_loss_b,
                "valid_ppl_backward": (
                    math.exp(min(50.0, valid_loss_b)) if valid_loss_b is not None else None
                ),
            }
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        plot_curve(out)
        # Without a validation split the latest model counts as the best. A
        # bidirectional model is judged by what it was trained on: both directions.
        score = valid_loss if valid_loss is not None else -st.step
        if valid_loss is not None and valid_loss_b is not None:
            score = (valid_loss + valid_loss_b) / 2
        if score < st.best_valid - 1e-4:
            st.best_valid, st.bad_evals = score, 0
            with atomic_directory(out / "best") as tmp:
                write_checkpoint_files(tmp, model, tok, **meta_now(metrics))
        else:
            st.bad_evals += 1
            if cfg.schedule == "plateau":
                st.lr_scale /= 4.0
        save_latest(out, model, tok, opt, cfg, st, carried, meta_now(metrics))
    # Keep the ranks' copies of the counters that drive decisions in step.
    if dist.is_initialized():
        t = torch.tensor(
            [float(st.bad_evals), st.lr_scale, st.best_valid],
            device=next(model.parameters()).device,
        )
        dist.broadcast(t, src=0)
        st.bad_evals, st.lr_scale, st.best_valid = int(t[0]), float(t[1]), float(t[2])
    return metrics


def _finish(
    out: Path,
    corpus: Path,
    tok: Tokenizer,
    cfg: TrainConfig,
    st: TrainState,
    splits: dict[str, TokenSplit],
    stopped: str,
    last_metrics: dict[str, Any],
    dev: torch.device,
    built: tuple[NgramModel, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The end of a run, on rank 0: the test split scored once and best/ written once.

    With an n-gram (the default) that one evaluation is `attach_ngram`'s, which scores
    each part on every test token and writes best/ with the n-gram: `test_ppl` is then
    the model's (the mixture's) and `test_ppl_rnn` the RNN's alone, in the summary and
    in best/config.json alike. Without one, the RNN is the model and `test_ppl` its.
    """
    summary: dict[str, Any] = {
        "stopped": stopped,
        "steps": st.step,
        "epochs": st.epoch,
        "elapsed_s": round(st.elapsed, 1),
        "tokens": st.tokens,
        "precision": cfg.precision,  # what `auto` chose
    }
    if not is_main():
        return summary
    config = read_config(out / "best")
    summary["best_valid_ppl"] = config.get("metrics", {}).get("valid_ppl")
    if cfg.bidirectional:
        summary["best_valid_ppl_backward"] = config.get("metrics", {}).get("valid_ppl_backward")
    summary["best_step"] = config.get("training", {}).get("step")
    finishing = stopped != "interrupted"
    test = len(splits["test"]) > 0 and finishing
    # What the RNN alone gives and the n-gram does not change: the backward direction.
    metrics: dict[str, Any] = {}
    best = load_checkpoint(out / "best", device=dev) if test else None
    if best is not None and cfg.bidirectional:
        nll, n = evaluate_split(best.model, tok, splits["test"], cfg.mode, backward=True)
        metrics["test_ppl_backward"] = summary["test_ppl_backward"] = math.exp(nll / n)
    if finishing and (cfg.ngram_order or cfg.ngram_arpa):
        summary |= _add_ngram(out, corpus, tok, cfg, metrics, built)
    elif best is not None:
        nll, n = evaluate_split(best.model, tok, splits["test"], cfg.mode)
        summary["test_ppl"] = metrics["test_ppl"] = math.exp(nll / n)
        summary["test_tokens"] = n
        config.setdefault("metrics", {}).update(metrics)
        with atomic_directory(out / "best") as tmp:
            write_checkpoint_files(
                tmp, best.model, tok, training=config["training"], metrics=config["metrics"]
            )
    summary["tokens_per_s"] = last_metrics.get("tokens_per_s")
    write_json(out / "summary.json", summary)
    return summary


def _add_ngram(
    out: Path,
    corpus: Path,
    tok: Tokenizer,
    cfg: TrainConfig,
    metrics: dict[str, Any],
    built: tuple[NgramModel, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Estimate (or import) the n-gram, fit λ on the validation split, put both in best/
    (with `metrics` added to its config), scoring the test split once, part by part.
    A residual model's n-gram was `built` when the run started and is in best/ already."""
    arpa = Path(cfg.ngram_arpa) if cfg.ngram_arpa else None
    if built is not None:
        ngram, info = built
    else:
        ngram, info = build_ngram(tok, corpus, cfg.mode, cfg.ngram_order or 0, arpa, note=log)
    log(
        f"n-gram: order {ngram.order}, {sum(ngram.counts()):,} n-grams, "
        f"{ngram.nbytes() / 1e6:.1f} MB, {info['source']} in {info['seconds']:.1f} s"
    )
    report = attach_ngram(
        out / "best", ngram, info, corpus, max_tokens=cfg.max_eval_tokens, metrics=metrics,
        match_len=cfg.match_len,
    )  # fmt: skip
    ppl = report["perplexity"]
    buckets = report["lambda_buckets"]
    log(
        f"n-gram: λ (the RNN's weight) {report['lambda']:.3f}, from {report['lambda_from']}"
        + (
            f"; one per mixing bucket ({min(buckets):.2f} to {max(buckets):.2f}): better than "
            "one λ on held-out validation text"
            if buckets
            else ""
        )
    )
    if report.get("lambda_gate") is not None:
        log(
            "n-gram: λ from a gate on each part's entropy and largest ln P too "
            f"(models/gate.py): {report['gate_gain']:.4f} nats a token better than the "
            "table on held-out validation text"
        )
    summary: dict[str, Any] = {
        "ngram": {
            "order": ngram.order,
            "lambda": report["lambda"],
            "source": info["source"],
            "seconds": info["seconds"],
            "megabytes": round(ngram.nbytes() / 1e6, 1),
            "valid_ppl_mixture": ppl.get("valid", {}).get("mixture"),
            "bucket_weights": buckets is not None,
            "gate": report.get("lambda_gate") is not None,
        }
    }
    if report.get("match") is not None:
        m = report["match"]
        summary["match"] = {
            "kept": m["mu_from"] == "validation",
            "max_len": m["max_len"],
            "valid_ppl": ppl.get("valid", {}).get("with_match"),
            "valid_guessed": m["valid_guessed"],
            "seconds": m["seconds"],
        }
        log(f"match model: {m['mu_from']}; its guess right for {m['valid_guessed']:.1%} of "
            "the validation tokens")  # fmt: skip
    if "test" in ppl:
        summary |= {
            "test_ppl": ppl["test"].get("with_match", ppl["test"]["mixture"]),
            "test_ppl_mixture": ppl["test"]["mixture"],
            "test_ppl_rnn": ppl["test"]["rnn"],
            "test_ppl_ngram": ppl["test"]["ngram"],
            "test_tokens": ppl["test"]["tokens"],
        }
        if "mixture_one_weight" in ppl["test"]:
            summary["test_ppl_one_weight"] = ppl["test"]["mixture_one_weight"]
    return summary


def train_command(args: argparse.Namespace) -> None:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        rc = launch_distributed(args.argv, args.nproc)
        if rc:
            sys.exit(rc)
        return
    names = {f.name for f in fields(TrainConfig)}
    given = {k for k, v in vars(args).items() if k in names and v is not None}
    cfg = TrainConfig(**{k: getattr(args, k) for k in given})
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = train(
        cfg,
        Path(args.corpus),
        Path(args.out),
        resume=args.resume,
        given=given,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone: rank 0 by name
        print(json.dumps(summary, indent=2))
    if summary["stopped"] == "interrupted":
        sys.exit(130)
