"""app/service.py's streams: what the worker hands over together goes out in one write."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

from rnnlm.app import service
from rnnlm.app.registry import LoadedModel
from rnnlm.app.scheduler import Delta, Failed, Finished, SampleJob
from rnnlm.models.results import SampleResult
from rnnlm.models.sampling import Generation, SampleParams


def _events(chunk: str) -> list[dict[str, Any]]:
    assert chunk.endswith("\n\n")
    return [json.loads(block.removeprefix("data: ")) for block in chunk[:-2].split("\n\n")]


def _model() -> LoadedModel:
    worker = SimpleNamespace(cancel=lambda job: None)
    return cast(LoadedModel, SimpleNamespace(name="m", worker=worker))


def _gens(n: int) -> list[Generation]:
    return [Generation(SampleParams(), seed=i, prompt_ids=[], prompt_text="") for i in range(n)]


def _result(text: str) -> SampleResult:
    return SampleResult(text=text, finish_reason="eos", num_tokens=len(text) + 1, logprob=-1.0,
                        seed=0)  # fmt: skip


def test_a_step_of_several_samples_is_one_write_and_the_end_another() -> None:
    async def main() -> list[str]:
        gens = _gens(2)
        job = SampleJob(gens, stream=True)
        stream = service.stream_sample(_model(), job, gens, 2)
        for ev in (Delta(0, "ab"), Delta(1, "c")):  # one step of both samples
            job.events.put_nowait(ev)
        first = await anext(stream)
        for ev in (Delta(0, "d"), Finished(0, _result("abd")), Finished(1, _result("c"))):
            job.events.put_nowait(ev)
        return [first, *[c async for c in stream]]

    first, last = asyncio.run(main())
    assert _events(first) == [{"type": "token", "index": 0, "text": "ab"},
                              {"type": "token", "index": 1, "text": "c"}]  # fmt: skip
    kinds = [(e["type"], e.get("index")) for e in _events(last)]
    assert kinds == [("token", 0), ("sample", 0), ("sample", 1), ("done", None)]
    assert _events(last)[-1]["usage"]["completion_tokens"] == 4 + 2


def test_a_failure_ends_the_stream_after_what_came_before_it() -> None:
    async def main() -> list[str]:
        gens = _gens(1)
        job = SampleJob(gens, stream=True)
        stream = service.stream_sample(_model(), job, gens, 1)
        job.events.put_nowait(Delta(0, "x"))
        job.events.put_nowait(Failed(RuntimeError("boom")))
        return [c async for c in stream]

    (only,) = asyncio.run(main())
    first, error = _events(only)
    assert first == {"type": "token", "index": 0, "text": "x"}
    assert error["type"] == "error" and "boom" not in json.dumps(error)  # not leaked
