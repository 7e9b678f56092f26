"""DistributedDataParallel under a real torchrun: 2 CPU ranks with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from models.checkpoint import load_checkpoint
from training.corpus import CorpusOptions, build_corpus

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
