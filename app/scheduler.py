"""The scheduler: one worker thread per model runs the engine; the event loop only waits.

    event loop                          worker thread (one per model)
    ──────────                          ─────────────────────────────
    submit_sample(job) ──┐              loop:
    submit_score(job)  ──┼─► queues ──►   drop cancelled sequences
    cancel(job)        ──┘  (bounded)     score every waiting /score request together
                                          admit waiting samples into the batch (prefill)
    job.events  ◄── call_soon_threadsafe ─ step every live sequence once, retire finished

Sequences join the running batch at token boundaries and leave it when done.
Each keeps its own parameters and random generator (see `models.engine`), so a
request gives the same result alone or beside any others. The number of waiting
requests is bounded: past `max_queue`, `submit_*` raises `Overloaded` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from rnnlm.app.errors import Overloaded
from rnnlm.app.metrics import Metrics
from rnnlm.models.adapt import Adaptation, score_adapting
from rnnlm.models.batch import Batch
from rnnlm.models.engine import Engine
from rnnlm.models.results import SampleResult, ScoreResult
from rnnlm.models.sampling import Generation

log = logging.getLogger("rnnlm.app")


@dataclass
class Delta:
    """New, stable text of sample `index` (streaming only)."""

    index: int
    text: str


@dataclass
class Finished:
    index: int
    result: SampleResult


@dataclass
class Failed:
    error: BaseException


Event = Delta | Finished | Failed


class SampleJob:
    """The sequences of one request; `events` receives what the worker produces."""

    def __init__(self, gens: list[Generation], stream: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.gens = gens
        for i, g in enumerate(gens):
            g.key = (self, i)
        self.stream = stream
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.flushed = -float("inf")  # when the worker last sent its new text (streaming)

    async def results(self) -> list[SampleResult]:
        """Wait for every sequence to finish; raise the worker's error if it failed."""
        out: list[SampleResult | None] = [None] * len(self.gens)
        remaining = len(self.gens)
        while remaining:
            ev = await self.events.get()
            if isinstance(ev, Failed):
                raise ev.error
            if isinstance(ev, Finished):
                out[ev.index] = ev.result
                remaining -= 1
        return [r for r in out if r is not None]


@dataclass
class ScoreJob:
    texts: list[str]
    bos: bool
    eos: bool
    per_token: bool
    top: int
    future: asyncio.Future[list[ScoreResult]]
    adapt: Adaptation | None = None  # its texts in order, adapting (models/adapt.py)

    @property
    def group(self) -> tuple[bool, bool, bool, int, int]:
        """Jobs scored in one call; an adapting job always alone (its own copy of the RNN)."""
        return (self.bos, self.eos, self.per_token, self.top, id(self) if self.adapt else 0)


def _owner(g: Generation) -> tuple[SampleJob, int]:
    """The job a sequence belongs to, and its index there (set by `SampleJob`)."""
    return cast(tuple[SampleJob, int], g.key)


def _deliver(items: list[tuple[SampleJob, Event]]) -> None:
    for job, ev in items:
        job.events.put_nowait(ev)


def _resolve(
    fut: asyncio.Future[Any], value: Any = None, error: BaseException | None = None
) -> None:
    if fut.done():  # the client went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    # RuntimeError: the loop closed (the app shut down), so nobody is waiting.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


class ModelWorker:
    """Runs one engine's continuous-batching loop in a thread of its own."""

    def __init__(
        self, name: str, engine: Engine, max_batch: int, max_queue: int, retry_after_s: int,
        metrics: Metrics, stream_interval_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.name = name
        # A streamed job's new text goes out at most this often: per token, a character
        # model's stream is one event, one write and one wake-up of the client per
        # character (the demo at 32 streamed clients, with one write per wake-up of the
        # loop: 9.3k tokens/s before, 10.6-10.8k at 10 ms, 13.1-13.6k not streamed).
        self.stream_interval_s = stream_interval_s
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._cond = threading.Condition()
        self._samples: deque[SampleJob] = deque()
        self._scores: list[ScoreJob] = []
        self._cancelled: list[SampleJob] = []
        self._stopping = False
        self._retiring = False  # replaced by a reload: finish what it holds, then end
        self._batch = Batch(engine)
        self._streaming: set[SampleJob] = set()  # running jobs that stream their text
        # The metrics of this model, looked up once (a labels() call per step adds up).
        self._m_step = metrics.step_seconds.labels(name)
        self._m_batch = metrics.batch_size.labels(name)
        self._m_tokens = metrics.tokens_generated.labels(name)
        self._m_running = metrics.running.labels(name)
        self._m_queue = metrics.queue_depth.labels(name)
        self._thread = threading.Thread(target=self._run, name=f"rnnlm-{name}", daemon=True)

    # ------------------------------------------------------------ event-loop side

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    def retire(self) -> None:
        """Finish every job already submitted, then end the thread (a newer version of
        the model took this one's place; nothing new is submitted here any more)."""
        with self._cond:
            self._retiring = True
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._samples) + len(self._scores)

    @property
    def running(self) -> int:
        return len(self._batch)

    def _backlog(self) -> int:
        """Requests that cannot start at the next token boundary: the queue that is bounded.

        Sampling jobs the batch has room for start at the next step, as the worker
        admits them (in order, stopping at the first that does not fit); they do not
        count, so a free slot is never refused because the worker is mid-step.
        """
        room = self.max_batch - len(self._batch)
        starting = 0
        for job in self._samples:
            if len(job.gens) > room:
                break
            room -= len(job.gens)
            starting += 1
        return len(self._samples) - starting + len(self._scores)

    def _admit_or_refuse(self) -> None:
        if (backlog := self._backlog()) >= self.max_queue:
            self.metrics.rejected.labels(self.name).inc()
            raise Overloaded(
                f"model {self.name!r} has {backlog} requests waiting; "
                f"retry in {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)},
            )

    def submit_sample(self, job: SampleJob) -> None:
        with self._cond:
            self._admit_or_refuse()
            self._samples.append(job)
            self._gauge()
            self._cond.notify()

    def submit_score(
        self,
        texts: list[str],
        bos: bool,
        eos: bool,
        per_token: bool,
        top: int,
        adapt: Adaptation | None = None,
    ) -> asyncio.Future[list[ScoreResult]]:
        fut: asyncio.Future[list[ScoreResult]] = asyncio.get_running_loop().create_future()
        with self._cond:
            self._admit_or_refuse()
            self._scores.append(ScoreJob(texts, bos, eos, per_token, top, fut, adapt))
            self._gauge()
            self._cond.notify()
        return fut

    def cancel(self, job: SampleJob) -> None:
        """Free the slots of a job whose client went away."""
        with self._cond:
            if job.cancelled:
                return
            job.cancelled = True
            if job in self._samples:
                self._samples.remove(job)
                self._gauge()
            else:
                self._cancelled.append(job)
                self._cond.notify()

    def cancel_score(self, fut: asyncio.Future[list[ScoreResult]]) -> None:
        with self._cond:
            self._scores = [j for j in self._scores if j.future is not fut]
            self._gauge()

    def _gauge(self) -> None:
        self._m_queue.set(self.queue_depth)

    # ---------------------------------------------------------------- worker side

    def _run(self) -> None:
        while True:
            with self._cond:
                idle = not (self._samples or self._scores or self._cancelled or len(self._batch))
                while idle and not (self._stopping or self._retiring):
                    self._cond.wait()
                    idle = not (
                        self._samples or self._scores or self._cancelled or len(self._batch)
                    )
                if self._stopping or (self._retiring and idle):
                    break
                scores, self._scores = self._scores, []
                cancelled, self._cancelled = self._cancelled, []
                admitted: list[SampleJob] = []
                room = self.max_batch - len(self._batch)
                while self._samples and (
                    len(self._samples[0].gens) <= room or not (len(self._batch) or admitted)
                ):
                    job = self._samples.popleft()
                    room -= len(job.gens)
                    admitted.append(job)
                self._gauge()
            try:
                self._tick(scores, cancelled, admitted)
            except Exception as e:  # a bug, not a client's doing: fail what was running
                log.exception("model %s: the engine failed", self.name)
                self._fail_all(scores, admitted, e)
        self._fail_all(self._scores, list(self._samples), RuntimeError("the service stopped"))

    def _tick(
        self, scores: list[ScoreJob], cancelled: list[SampleJob], admitted: list[SampleJob]
    ) -> None:
        batch = self._batch
        if cancelled:
            gone = set(map(id, cancelled))
            batch.remove([i for i, g in enumerate(batch.gens) if id(_owner(g)[0]) not in gone])
            self._streaming.difference_update(cancelled)
        if scores:
            self._score(scores)
        out: list[tuple[SampleJob, Event]] = []
        finished: list[Generation] = []
        new = [g for job in admitted for g in job.gens]
        self._streaming.update(job for job in admitted if job.stream)
        if new:
            finished += batch.add(new)
        if len(batch):
            n = len(batch)
            t0 = time.perf_counter()
            finished += batch.step()
            self._m_step.observe(time.perf_counter() - t0)
            self._m_batch.observe(n)
            self._m_tokens.inc(n)
        self._m_running.set(len(batch))
        # New text of every running streamed sequence (the others need none until the end),
        # if its job's last went out long enough ago; a finished one's rest goes out below.
        now = time.monotonic()
        for job in self._streaming:
            if now - job.flushed < self.stream_interval_s:
                continue
            for index, g in enumerate(job.gens):
                if g.finish_reason is None and (text := g.delta()):
                    out.append((job, Delta(index, text)))
                    job.flushed = now
        for g in finished:
            job, index = _owner(g)
            if job.stream and (text := g.delta()):
                out.append((job, Delta(index, text)))
            out.append((job, Finished(index, self.engine.result(g))))
        if finished and self._streaming:
            self._streaming = {j for j in self._streaming if any(g.finish_reason is None
                                                                  for g in j.gens)}  # fmt: skip
        self._send(out)

    def _score(self, jobs: list[ScoreJob]) -> None:
        groups: dict[tuple[bool, bool, bool, int, int], list[ScoreJob]] = {}
        for job in jobs:
            groups.setdefault(job.group, []).append(job)
        for group in groups.values():
            self._score_group(group)

    def _score_group(self, group: list[ScoreJob]) -> None:
        bos, eos, per_token, top, _ = group[0].group
        adapt = group[0].adapt
        texts = [t for job in group for t in job.texts]
        try:
            if adapt is not None:
                results = score_adapting(self.engine, texts, bos, eos, per_token, adapt)
            else:
                results = self.engine.score_batch(texts, bos, eos, per_token, top)
        except Exception as e:
            if len(group) > 1:  # whose request was it? Each alone: only that one fails
                for job in group:
                    self._score_group([job])
                return
            log.exception("model %s: scoring failed", self.name)
            _call_soon(group[0].future.get_loop(), _resolve, group[0].future, None, e)
            return
        self.metrics.score_batch_size.labels(self.name).observe(len(texts))
        self.metrics.tokens_scored.labels(self.name).inc(sum(r.num_tokens for r in results))
        start = 0
        for job in group:
            part = results[start : start + len(job.texts)]
            start += len(job.texts)
            _call_soon(job.future.get_loop(), _resolve, job.future, part)

    def _send(self, items: list[tuple[SampleJob, Event]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[SampleJob, Event]]] = {}
        for job, ev in items:
            by_loop.setdefault(job.loop, []).append((job, ev))
        for loop, part in by_loop.items():
            _call_soon(loop, _deliver, part)
        if by_loop and hasattr(os, "sched_yield"):
            # Let the event loop answer now if it shares this core: otherwise it waits for
            # the scheduler's next turn, and a finished request's slot stays empty until
            # its client's next request arrives (server pinned to one core, 32 streams:
            # 3-5% more tokens/s in three A/B pairs). Elsewhere it costs one system call.
            os.sched_yield()

    def _fail_all(
        self, scores: list[ScoreJob], jobs: list[SampleJob], error: BaseException
    ) -> None:
        running = {id(job): job for job, _ in map(_owner, self._batch.gens)}
        every = {id(j): j for j in jobs} | running
        self._batch = Batch(self.engine)
        self._streaming.clear()
        self._send([(job, Failed(error)) for job in every.values()])
        for s in scores:
            _call_soon(s.future.get_loop(), _resolve, s.future, None, error)
