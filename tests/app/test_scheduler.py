"""The scheduler: batching never changes a result; queues are bounded; cancelling frees slots."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rnnlm.app.errors import Overloaded
from rnnlm.app.metrics import Metrics
from rnnlm.app.scheduler import Delta, Finished, ModelWorker, SampleJob
from rnnlm.models.batch import sample
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.results import SampleResult
from rnnlm.models.sampling import SampleParams


@pytest.fixture(scope="module")
def engine(char_checkpoint: Path) -> Engine:
    return Engine(load_checkpoint(char_checkpoint))


def _worker(engine: Engine, start: bool = True, **kw: float) -> ModelWorker:
    w = ModelWorker(
        "m", engine, int(kw.get("max_batch", 64)), int(kw.get("max_queue", 100)), 1, Metrics(),
        stream_interval_s=kw.get("stream_interval_s", 0.0),
    )  # fmt: skip
    if start:
        w.start()
    return w


REQUESTS = [
    ("", SampleParams(max_tokens=30, seed=1)),
    ("the ", SampleParams(max_tokens=25, temperature=0.7, seed=2)),
    ("a", SampleParams(max_tokens=40, top_k=5, seed=3)),
    ("hello", SampleParams(max_tokens=20, top_p=0.8, seed=4, stop=["t", "e "])),
    ("", SampleParams(max_tokens=35, min_p=0.3, seed=5)),
    ("cat ", SampleParams(max_tokens=15, temperature=0, seed=6)),
    ("", SampleParams(max_tokens=0, seed=7)),
    ("the dog", SampleParams(max_tokens=50, temperature=1.5, seed=8, logprobs=True)),
]


async def _run(worker: ModelWorker, engine: Engine, prompt: str, p: SampleParams, n: int = 1):
    gens = [engine.generation(prompt, p, i) for i in range(n)]
    job = SampleJob(gens)
    worker.submit_sample(job)
    return await job.results()


def _key(r: SampleResult) -> tuple[str, str, int, int]:
    return (r.text, r.finish_reason, r.num_tokens, r.seed)


def _same(a: list[list[SampleResult]], b: list[list[SampleResult]]) -> None:
    """Same tokens, text and seed exactly; logprob up to float32 rounding (a matrix
    product over a different batch size rounds differently in the last bits)."""
    assert [[_key(r) for r in rs] for rs in a] == [[_key(r) for r in rs] for rs in b]
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            assert x.logprob == pytest.approx(y.logprob, rel=1e-6, abs=1e-5)


def test_concurrent_requests_give_exactly_what_they_give_alone(engine: Engine) -> None:
    worker = _worker(engine)
    # Submitted before its worker starts: all in its first step, however fast the engine.
    held = _worker(engine, start=False)

    async def main() -> tuple[list, list, list]:
        alone = [await _run(worker, engine, pr, p, n=2) for pr, p in REQUESTS]
        # Rows joining at whichever steps they reach the worker.
        together = await asyncio.gather(*(_run(worker, engine, pr, p, n=2) for pr, p in REQUESTS))
        runs = [asyncio.ensure_future(_run(held, engine, pr, p, n=2)) for pr, p in REQUESTS]
        await asyncio.sleep(0)
        assert held.queue_depth == len(REQUESTS)  # every job submitted
        held.start()
        return alone, list(together), list(await asyncio.gather(*runs))

    try:
        alone, together, shared = asyncio.run(main())
    finally:
        worker.stop()
        held.stop()
    _same(alone, together)
    _same(alone, shared)
    # ... and what the engine gives with no scheduler at all.
    _same([sample(engine, pr, p, n=2) for pr, p in REQUESTS], alone)
    # The held run really shared decoding steps.
    reg = held.metrics.registry
    steps = reg.get_sample_value("rnnlm_batch_size_count", {"model": "m"})
    singles = reg.get_sample_value("rnnlm_batch_size_bucket", {"model": "m", "le": "1.0"})
    big = reg.get_sample_value("rnnlm_batch_size_bucket", {"model": "m", "le": "8.0"})
    assert steps and big is not None and singles is not None
    assert steps - big > 0, "no step ran more than 8 sequences together"
    assert {r.finish_reason for rs in alone for r in rs} >= {"length", "eos"}


def test_streamed_deltas_add_up_to_the_text(engine: Engine) -> None:
    worker = _worker(engine)

    async def main() -> tuple[list[str], list[SampleResult]]:
        p = SampleParams(max_tokens=60, seed=11, stop=["e ", "at"])
        gens = [engine.generation("th", p, i) for i in range(3)]
        job = SampleJob(gens, stream=True)
        worker.submit_sample(job)
        texts, results = ["", "", ""], [None, None, None]
        while any(r is None for r in results):
            ev = await asyncio.wait_for(job.events.get(), 10)
            if isinstance(ev, Delta):
                assert results[ev.index] is None, "text after the sample finished"
                texts[ev.index] += ev.text
            elif isinstance(ev, Finished):
                results[ev.index] = ev.result
        return texts, results  # type: ignore[return-value]

    try:
        texts, results = asyncio.run(main())
    finally:
        worker.stop()
    assert texts == [r.text for r in results]
    direct = sample(engine, "th", SampleParams(max_tokens=60, seed=11, stop=["e ", "at"]), n=3)
    _same([results], [direct])


async def _streamed(worker: ModelWorker, engine: Engine, p: SampleParams) -> list[Delta]:
    job = SampleJob([engine.generation("", p)], stream=True)
    worker.submit_sample(job)
    deltas: list[Delta] = []
    while not isinstance(ev := await asyncio.wait_for(job.events.get(), 10), Finished):
        assert isinstance(ev, Delta)
        deltas.append(ev)
    return deltas


@pytest.mark.parametrize("interval", [0.0, 60.0])
def test_stream_interval_coalesces_text_not_changes_it(
    endless_checkpoint: Path, interval: float
) -> None:
    """A streamed sample's new text goes out at most every `stream_interval_s`: with 0, a
    character model sends every token; with a minute, its first text at once, then the
    rest when it ends. The text is the same either way."""
    engine = Engine(load_checkpoint(endless_checkpoint))  # never <eos>: all 120 tokens
    worker = _worker(engine, stream_interval_s=interval)
    p = SampleParams(max_tokens=120, seed=3)
    try:
        deltas = asyncio.run(_streamed(worker, engine, p))
    finally:
        worker.stop()
    text = sample(engine, "", p)[0].text
    assert "".join(d.text for d in deltas) == text
    if interval:
        assert len(deltas) == 2 and len(deltas[0].text) == 1
    else:
        assert len(deltas) == 120 and all(len(d.text) == 1 for d in deltas)


def test_scores_arriving_together_are_scored_together(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, bool]] = []
    real = engine.score_batch

    def spy(texts, bos=True, eos=True, per_token=False, top=0):  # type: ignore[no-untyped-def]
        calls.append((len(texts), eos))
        return real(texts, bos, eos, per_token, top)

    monkeypatch.setattr(engine, "score_batch", spy)
    worker = _worker(engine, start=False)
    batches = [["the cat", "a"], ["hello world!"], ["", "zz\u0000q"]]

    async def main() -> list:
        futs = [worker.submit_score(t, True, True, False, 0) for t in batches]
        futs.append(worker.submit_score(["the cat"], True, False, False, 0))
        worker.start()  # everything above is waiting: one call per option set
        return await asyncio.gather(*futs)

    try:
        results = asyncio.run(main())
    finally:
        worker.stop()
    assert sorted(calls) == [(1, False), (5, True)]
    monkeypatch.undo()
    for texts, got in zip(batches, results, strict=False):
        # Scored in a batch of 5 against alone: equal to float32 rounding, which
        # depends on the CPU's BLAS kernel for each batch shape, so not bitwise.
        alone = [r.logprob for r in engine.score_batch(texts)]
        assert [r.logprob for r in got] == pytest.approx(alone, rel=1e-6, abs=1e-4)
    assert results[3][0].num_tokens == 7  # no <eos>


def test_a_full_queue_refuses_with_retry_after(engine: Engine) -> None:
    worker = _worker(engine, start=False, max_queue=2, max_batch=1)

    async def main() -> None:
        p = SampleParams(max_tokens=3, seed=1)
        worker.submit_sample(SampleJob([engine.generation("", p)]))  # starts at the next step
        worker.submit_sample(SampleJob([engine.generation("", p)]))  # waits: no room
        worker.submit_score(["a"], True, True, False, 0)  # waits
        with pytest.raises(Overloaded) as e:
            worker.submit_sample(SampleJob([engine.generation("", p)]))
        assert e.value.headers == {"Retry-After": "1"}
        assert "2 requests waiting" in e.value.message
        assert worker.queue_depth == 3

    asyncio.run(main())
    reg = worker.metrics.registry
    assert reg.get_sample_value("rnnlm_rejected_total", {"model": "m"}) == 1
    assert reg.get_sample_value("rnnlm_queue_depth", {"model": "m"}) == 3


def test_a_request_the_batch_has_room_for_is_never_refused(engine: Engine) -> None:
    # Found by bench/load.py: with the worker mid-step, requests that would start at
    # the next token boundary counted as waiting, and 6 clients got 503s from a server
    # with room for 4 running and 4 waiting.
    worker = _worker(engine, start=False, max_queue=1, max_batch=4)

    async def main() -> None:
        p = SampleParams(max_tokens=3, seed=1)
        for _ in range(4):  # the worker is not stepping: all four are in its queue
            worker.submit_sample(SampleJob([engine.generation("", p)]))
        worker.submit_sample(SampleJob([engine.generation("", p)]))  # the one that waits
        with pytest.raises(Overloaded):
            worker.submit_sample(SampleJob([engine.generation("", p)]))

    asyncio.run(main())


def test_cancelling_frees_the_slot_and_others_go_on(endless_checkpoint: Path) -> None:
    engine = Engine(load_checkpoint(endless_checkpoint))
    worker = _worker(engine, max_batch=1)

    async def main() -> SampleResult:
        # Endless at any speed: only the cancel can end it.
        long = SampleJob([engine.generation("", SampleParams(max_tokens=10**9, seed=1))], True)
        worker.submit_sample(long)
        ev = await asyncio.wait_for(long.events.get(), 10)
        assert isinstance(ev, Delta)
        assert worker.running == 1
        worker.cancel(long)
        # A new job fits only if the cancelled one left the batch.
        short = SampleJob([engine.generation("", SampleParams(max_tokens=5, seed=2))] * 1)
        worker.submit_sample(short)
        (r,) = await asyncio.wait_for(short.results(), 10)
        deadline = time.monotonic() + 60  # a hang guard
        while worker.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert worker.running == 0
        return r

    try:
        r = asyncio.run(main())
    finally:
        worker.stop()
    assert r.num_tokens == 5 and r.finish_reason == "length"


def test_waiting_job_cancelled_before_admission_never_runs(engine: Engine) -> None:
    worker = _worker(engine, start=False)

    async def main() -> None:
        job = SampleJob([engine.generation("", SampleParams(max_tokens=3, seed=1))])
        worker.submit_sample(job)
        worker.cancel(job)
        assert worker.queue_depth == 0
        worker.start()
        # A job behind it, no shorter: had the cancelled one run, it would have finished
        # first or in the same step, and its events would be there now.
        await asyncio.wait_for(_run(worker, engine, "", SampleParams(max_tokens=3, seed=2)), 10)
        assert job.events.empty()

    try:
        asyncio.run(main())
    finally:
        worker.stop()


def test_an_engine_failure_fails_the_running_jobs_and_the_worker_survives(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _worker(engine, start=False)
    boom = RuntimeError("boom")

    def broken(self, gens):  # type: ignore[no-untyped-def]
        raise boom

    async def main() -> None:
        from rnnlm.models.batch import Batch

        with monkeypatch.context() as m:
            m.setattr(Batch, "add", broken)
            job = SampleJob([engine.generation("", SampleParams(max_tokens=3, seed=1))])
            worker.submit_sample(job)
            worker.start()
            with pytest.raises(RuntimeError, match="boom"):
                await asyncio.wait_for(job.results(), 10)
        ok = await _run(worker, engine, "", SampleParams(max_tokens=3, seed=1))
        assert ok[0].num_tokens >= 1

    try:
        asyncio.run(main())
    finally:
        worker.stop()


def test_a_request_that_breaks_scoring_fails_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.score_batch

    def fragile(texts, bos=True, eos=True, per_token=False, top=0):  # type: ignore[no-untyped-def]
        if "boom" in texts:
            raise RuntimeError("boom")
        return real(texts, bos, eos, per_token, top)

    monkeypatch.setattr(engine, "score_batch", fragile)
    worker = _worker(engine, start=False)

    async def main() -> list:
        futs = [worker.submit_score(t, True, True, False, 0) for t in (["a"], ["boom"], ["b"])]
        worker.start()  # all three in one group: scored together, then apart
        return await asyncio.gather(*futs, return_exceptions=True)

    try:
        a, boom, b = asyncio.run(main())
    finally:
        worker.stop()
    assert isinstance(boom, RuntimeError)
    assert a[0].text == "a" and b[0].text == "b"
