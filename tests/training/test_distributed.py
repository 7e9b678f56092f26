"""DistributedDataParallel under a real torchrun: 2 CPU ranks with gloo."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.training.config import TrainConfig
from rnnlm.training.corpus import CorpusOptions, TokenSplit, build_corpus
from rnnlm.training.data import sentence_batches

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "corpus"
    build_corpus([text_file], out, CorpusOptions(seed=1))
    return out


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _read(dump: Path) -> tuple[dict[int, torch.Tensor], dict[int, float], dict[str, object]]:
    with safe_open(str(dump), "pt") as f:
        meta = f.metadata()
        weights = {int(k.removeprefix("step")): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    diffs = {int(k): v for k, v in json.loads(meta["diffs"]).items()}
    return weights, diffs, json.loads(meta["summary"])


def test_two_ranks_stay_identical_and_match_one_process_on_the_global_batch(
    tmp_path: Path, corpus: Path
):
    steps = 6
    _run([*TORCHRUN, str(WORKER), str(corpus), str(tmp_path / "ddp"), str(tmp_path / "ddp.st"),
          "4", str(steps)])  # fmt: skip
    # One process with the global batch: 2 ranks x 4 lanes = 8 lanes, the same lanes.
    _run([sys.executable, str(WORKER), str(corpus), str(tmp_path / "one"),
          str(tmp_path / "one.st"), "8", str(steps)])  # fmt: skip
    ddp, diffs, summary = _read(tmp_path / "ddp.st")
    one, _, one_summary = _read(tmp_path / "one.st")
    assert sorted(ddp) == sorted(one) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert diffs[step] == 0.0, f"ranks differ after step {step}"
        assert torch.allclose(ddp[step], one[step], atol=2e-5, rtol=1e-4), step
    # The weights did move, so the comparison means something.
    assert (ddp[steps] - ddp[1]).abs().max() > 1e-3
    assert summary["tokens"] == one_summary["tokens"] == steps * 8 * 16
    # Only rank 0 wrote, and its checkpoint holds the same weights.
    best = load_checkpoint(tmp_path / "ddp" / "latest")
    flat = torch.cat([p.detach().reshape(-1) for p in best.model.parameters()])
    assert torch.equal(flat, ddp[steps])


def test_resume_a_distributed_run_and_refuse_another_world_size(tmp_path: Path, corpus: Path):
    out, dump = tmp_path / "run", tmp_path / "a.st"
    _run([*TORCHRUN, str(WORKER), str(corpus), str(out), str(dump), "4", "4"])
    _run([*TORCHRUN, str(WORKER), str(corpus), str(out), str(dump), "4", "8", "--resume"])
    weights, diffs, summary = _read(dump)
    assert sorted(weights) == [5, 6, 7, 8]  # continued from step 4
    assert all(d == 0.0 for d in diffs.values())
    assert summary["steps"] == 8
    one = subprocess.run(
        [sys.executable, str(WORKER), str(corpus), str(out), str(dump), "4", "10", "--resume"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert one.returncode != 0
    assert "trained by 2 process(es), not 1" in one.stderr


def test_cli_nproc_launches_torchrun(tmp_path: Path, corpus: Path):
    r = _run([sys.executable, "-m", "rnnlm.cli", "train", "--corpus", str(corpus),
              "--out", str(tmp_path / "run"), "--nproc", "2", "--mode", "stream",
              "--hidden", "16", "--embedding", "8", "--layers", "1", "--batch-size", "4",
              "--bptt", "16", "--max-steps", "4", "--no-progress"])  # fmt: skip
    summary = json.loads(r.stdout)  # printed once, by rank 0
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 2 * 4 * 16
    assert "launching 2 processes" in r.stderr
    cfg = json.loads((tmp_path / "run" / "latest" / "trainer_state.json").read_text())
    assert cfg["world_size"] == 2


# ------------------------------------------- sentence mode: batches of different lengths


def _varied_text(text_file: Path, lines: int, sizes: tuple[int, ...]) -> str:
    """`lines` lines of `sizes` words, so sentence batches differ in their BPTT windows."""
    words = text_file.read_text(encoding="utf-8").split()
    out, at = [], 0
    for i in range(lines):
        n = sizes[(i * 7) % len(sizes)]
        out.append(" ".join(words[at : at + n]))
        at = (at + n) % (len(words) - max(sizes))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> dict[str, Path]:
    """Char and word corpora whose lines range from one word to 300, and `short`, a char
    corpus of one to 16 words."""
    root = tmp_path_factory.mktemp("varied")
    (root / "long.txt").write_text(_varied_text(text_file, 600, (1, 4, 30, 120, 300)))
    (root / "short.txt").write_text(_varied_text(text_file, 400, (1, 2, 4, 8, 16)))
    out = {}
    for name, kind, text in (("char", "char", "long"), ("word", "word", "long"),
                             ("short", "char", "short")):  # fmt: skip
        out[name] = root / name
        build_corpus([root / f"{text}.txt"], out[name], CorpusOptions(tokenizer=kind, seed=1))
    return out


def _first_batches_differ(corpus: Path, batch_size: int, bptt: int, seed: int) -> bool:
    """Whether the two ranks' first batches differ in their number of BPTT windows: what
    put the ranks' collectives out of step from the first step on."""
    split = TokenSplit(corpus, "train")
    first = [sentence_batches(split, batch_size, 0, seed, rank, 2)[0] for rank in (0, 1)]
    wins = [math.ceil(split.lengths[idx].max() / bptt) for idx in first]
    return wins[0] != wins[1]


@pytest.mark.parametrize("kind", ["char", "word", "char-residual"])
def test_cli_nproc_trains_with_the_default_sentence_mode(
    tmp_path: Path, varied: dict[str, Path], kind: str
):
    # The defaults' batch and BPTT (char 64 x 200, word 20 x 35): the ranks' batches
    # really differ in windows, which crashed gloo before ("Received data size doesn't
    # match expected size"). A residual model's padding windows have no prior.
    kind, _, residual = kind.partition("-")
    cfg = TrainConfig().resolve(kind, 100)
    assert cfg.batch_size and cfg.bptt
    assert _first_batches_differ(varied[kind], cfg.batch_size, cfg.bptt, cfg.seed)
    steps = 12
    r = _run([sys.executable, "-m", "rnnlm.cli", "train", "--corpus", str(varied[kind]),
              "--out", str(tmp_path / "run"), "--nproc", "2", "--layers", "1",
              "--hidden", "32", "--max-steps", str(steps), "--no-progress",
              *(["--residual"] if residual else [])])  # fmt: skip
    summary = json.loads(r.stdout)
    assert summary["stopped"] == "max_steps" and summary["steps"] == steps, summary
    assert math.isfinite(summary["test_ppl"]) and math.isfinite(summary["best_valid_ppl"])
    if residual:
        assert load_checkpoint(tmp_path / "run" / "best").model.config.residual


@pytest.mark.parametrize("mode", ["sentence", "bidirectional"])
def test_ranks_stay_identical_over_batches_of_different_lengths(
    tmp_path: Path, varied: dict[str, Path], mode: str
):
    corpus, steps = varied["short"], 10
    assert _first_batches_differ(corpus, 4, 16, seed=7)  # the worker's batch, BPTT, seed
    _run([*TORCHRUN, str(WORKER), str(corpus), str(tmp_path / "run"), str(tmp_path / "d.st"),
          "4", str(steps), "--mode", mode])  # fmt: skip
    weights, diffs, summary = _read(tmp_path / "d.st")
    assert sorted(weights) == list(range(1, steps + 1))
    assert all(d == 0.0 for d in diffs.values()), diffs
    assert (weights[steps] - weights[1]).abs().max() > 1e-3
    assert summary["steps"] == steps


def _processes_naming(text: str) -> list[str]:
    """Command lines of the live processes that mention `text` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        line = b" ".join(args).decode(errors="replace")
        if text in line:
            found.append(line)
    return found


def test_nproc_run_stops_on_sigterm_saves_and_resumes(tmp_path: Path, varied: dict[str, Path]):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnlm.cli", "train", "--corpus", str(varied["word"]),
           "--out", str(out), "--nproc", "2", "--layers", "1", "--hidden", "32",
           "--save-every", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Far more steps than any machine takes before the signal: the run is killed in flight.
    proc = subprocess.Popen([*cmd, "--max-steps", "1000000"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    state = out / "latest" / "trainer_state.json"
    deadline = time.monotonic() + 200  # a hang guard only
    while not state.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint was saved"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the launcher, as a supervisor would
    stdout, stderr = proc.communicate(timeout=200)
    assert proc.returncode == 130, stderr[-3000:]
    assert json.loads(stdout)["stopped"] == "interrupted"
    # torchrun and both ranks are gone with the launcher, none left training.
    assert not _processes_naming(str(out)), _processes_naming(str(out))
    saved = json.loads(state.read_text())
    assert saved["world_size"] == 2 and saved["state"]["step"] >= 2
    step = saved["state"]["step"]
    r = _run([*cmd, "--resume", "--max-steps", str(step + 6)])
    assert f"resuming at step {step}" in r.stderr
    summary = json.loads(r.stdout)
    assert summary["stopped"] == "max_steps" and summary["steps"] == step + 6
