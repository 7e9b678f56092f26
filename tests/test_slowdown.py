"""tests/slow/sitecustomize.py, the engine made F times slower for the whole suite (see
tests/README.md): it really slows a decoding step and a scoring call, and without
RNNLM_TEST_SLOWDOWN it does nothing at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SLOW = Path(__file__).resolve().parent / "slow"

# Times each call slowed and unslowed in the same process (the original is the wrapper's
# `__wrapped__`): a ratio in one run, whatever the machine's speed.
PROBE = """
import json, sys, time
started_clean = "torch" not in sys.modules and "rnnlm.models.batch" not in sys.modules
from rnnlm.models.batch import Batch
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.sampling import SampleParams

def best(fn):
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)

marks = [getattr(f, "rnnlm_slowdown", None) for f in (Batch.step, Batch.add, Engine._score)]
engine = Engine(load_checkpoint(sys.argv[1]))
batch = Batch(engine)
batch.add([engine.generation("", SampleParams(max_tokens=10**6, seed=s)) for s in range(8)])
out = {"sitecustomize": sys.modules["sitecustomize"].__file__, "marks": marks,
       "started_clean": started_clean, "helper": "rnnlm_slowdown" in sys.modules}
if marks[0]:
    texts = ["the cat sat on the mat."] * 16
    out["step"], out["step_raw"] = best(batch.step), best(lambda: Batch.step.__wrapped__(batch))
    out["score"] = best(lambda: engine.score_batch(texts))
    Engine._score = Engine._score.__wrapped__
    out["score_raw"] = best(lambda: engine.score_batch(texts))
print(json.dumps(out))
"""


def _probe(checkpoint: Path, slowdown: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "RNNLM_TEST_SLOWDOWN"}
    env["PYTHONPATH"] = os.pathsep.join([str(SLOW), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    if slowdown is not None:
        env["RNNLM_TEST_SLOWDOWN"] = slowdown
    res = subprocess.run([sys.executable, "-c", PROBE, str(checkpoint)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Error in sitecustomize" not in res.stderr, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    assert out["sitecustomize"] == str(SLOW / "sitecustomize.py")
    return out


def test_slowdown_slows_a_step_and_a_score_call(char_checkpoint: Path) -> None:
    out = _probe(char_checkpoint, "20")
    assert out["started_clean"], out  # patched when the engine is imported, not at startup
    assert out["marks"] == [20.0, 20.0, 20.0]  # Batch.step, Batch.add, Engine._score
    # 20 times as long each; at least 3 on a busy machine.
    assert out["step"] > 3 * out["step_raw"], out
    assert out["score"] > 3 * out["score_raw"], out


def test_without_the_variable_nothing_is_patched(char_checkpoint: Path) -> None:
    out = _probe(char_checkpoint, None)
    assert out["started_clean"] and not out["helper"], out
    assert out["marks"] == [None, None, None], out
