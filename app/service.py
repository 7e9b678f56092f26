"""What the routes do, between the wire schemas and the scheduler.

Every request becomes a job for its model's worker; the route awaits the job
or streams its events, and a client that goes away cancels it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request

from rnnlm.app.errors import ServiceError, error_body
from rnnlm.app.registry import LoadedModel
from rnnlm.app.scheduler import Delta, Event, Failed, Finished, SampleJob
from rnnlm.app.schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Sample,
    SampleRequest,
    SampleResponse,
    ScoreOut,
    ScoreRequest,
    ScoreResponse,
    Usage,
    dump,
)
from rnnlm.models.results import SampleResult, TokenLogprob
from rnnlm.models.sampling import Generation, SampleParams

T = TypeVar("T")


class ClientClosed(ServiceError):
    status = 499
    type = "client_closed_request"


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(work: Awaitable[T], request: Request, on_gone: Any) -> T:
    """Await `work`; if the client disconnects first, call `on_gone` and give up."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    finished = False
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            finished = True
            return task.result()
        raise ClientClosed("the client closed the connection")
    finally:
        watcher.cancel()
        if not finished:
            task.cancel()
            on_gone()


def sse(data: dict[str, Any] | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n"


def _generations(
    model: LoadedModel, prompts: list[str], params: SampleParams, n: int
) -> list[Generation]:
    """n sequences per prompt; sample j of each prompt uses seed `(seed + j) mod 2**63`."""
    return [model.engine.generation(p, params, j) for p in prompts for j in range(n)]


def _usage(gens: list[Generation], n: int, results: list[SampleResult]) -> Usage:
    prompt = sum(len(g.prompt_ids) for g in gens[::n])
    completion = sum(r.num_tokens for r in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


# ----------------------------------------------------------------------- native


def start_sample(model: LoadedModel, req: SampleRequest) -> tuple[SampleJob, list[Generation]]:
    gens = _generations(model, [req.prompt], req.to_params(), req.n)
    job = SampleJob(gens, stream=req.stream)
    model.worker.submit_sample(job)
    return job, gens


async def sample(model: LoadedModel, req: SampleRequest, request: Request) -> SampleResponse:
    job, gens = start_sample(model, req)
    results = await _unless_disconnected(job.results(), request, lambda: model.worker.cancel(job))
    return SampleResponse(
        model=model.name,
        samples=[Sample.of(r) for r in results],
        usage=_usage(gens, req.n, results),
    )


async def _waiting(events: asyncio.Queue[Event]) -> list[Event]:
    """The next event and every other one already there: what one write of a stream carries
    (the worker hands over a step's events together)."""
    out = [await events.get()]
    while not events.empty():
        out.append(events.get_nowait())
    return out


async def stream_sample(
    model: LoadedModel, job: SampleJob, gens: list[Generation], n: int
) -> AsyncIterator[str]:
    """SSE: `token` events with new text, a `sample` event as each finishes, then `done`."""
    results: list[SampleResult] = []
    try:
        while len(results) < len(gens):
            chunk = []
            for ev in await _waiting(job.events):
                if isinstance(ev, Delta):
                    chunk.append(sse({"type": "token", "index": ev.index, "text": ev.text}))
                elif isinstance(ev, Finished):
                    results.append(ev.result)
                    sample = dump(Sample.of(ev.result))
                    chunk.append(sse({"type": "sample", "index": ev.index, "sample": sample}))
                elif isinstance(ev, Failed):
                    yield "".join(chunk) + sse({"type": "error", **_stream_error(ev.error)})
                    return
            if len(results) == len(gens):
                usage = dump(_usage(gens, n, results))
                chunk.append(sse({"type": "done", "model": model.name, "usage": usage}))
            yield "".join(chunk)
    finally:
        if len(results) < len(gens):
            model.worker.cancel(job)


def _stream_error(e: BaseException) -> dict[str, Any]:
    if isinstance(e, ServiceError):
        return error_body(e.message, e.type, e.param, e.code)
    return error_body("internal error (logged on the server)", "server_error")


async def score(model: LoadedModel, req: ScoreRequest, request: Request) -> ScoreResponse:
    adapt = None if req.adapt is None else req.adapt.to_adaptation()
    fut = model.worker.submit_score(req.texts, req.bos, req.eos, req.per_token, 0, adapt)
    results = await _unless_disconnected(fut, request, lambda: model.worker.cancel_score(fut))
    return ScoreResponse(model=model.name, results=[ScoreOut.of(r) for r in results])


# ------------------------------------------------------------------------ OpenAI


def token_offsets(text: str, pieces: list[str], base: int = 0) -> list[int]:
    """Where each token's piece starts in `text` (plus `base`), found left to right.

    A piece not found as written (case folded, normalised, <eos>) is placed
    where the previous one ended.
    """
    out, pos, low = [], 0, None
    for p in pieces:
        i = -1
        for cand in dict.fromkeys((p, p.strip())):
            if cand and (i := text.find(cand, pos)) >= 0:
                pos = i + len(cand)
                break
            if cand:
                low = low if low is not None else text.lower()
                if (i := low.find(cand.lower(), pos)) >= 0:
                    pos = i + len(cand)
                    break
        out.append(base + (i if i >= 0 else pos))
    return out


def _logprobs(tokens: list[TokenLogprob], text: str, base: int, top: int) -> CompletionLogprobs:
    names = [t.token for t in tokens]
    return CompletionLogprobs(
        tokens=names,
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[dict(t.top or []) for t in tokens] if top else None,
        text_offset=token_offsets(text, names, base),
    )


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"  # <eos> and stop strings: "stop"


class _Completion:
    """One /v1/completions request in flight: its generations and, with echo, prompt scores."""

    def __init__(self, model: LoadedModel, req: CompletionRequest) -> None:
        self.model, self.req = model, req
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.prompts, self.n = req.prompts, req.n or 1
        self.echo, self.top = bool(req.echo), req.logprobs or 0
        self.want_logprobs = req.logprobs is not None
        self.gens = _generations(model, self.prompts, req.to_params(), self.n)
        self.job = SampleJob(self.gens, stream=bool(req.stream))
        self.scores: asyncio.Future[Any] | None = None
        if self.echo and self.want_logprobs:
            self.scores = model.worker.submit_score(self.prompts, True, False, True, self.top)
        try:
            model.worker.submit_sample(self.job)
        except ServiceError:
            self.cancel()
            raise

    def cancel(self) -> None:
        self.model.worker.cancel(self.job)
        if self.scores is not None:
            self.model.worker.cancel_score(self.scores)
            self.scores.cancel()

    async def prompt_tokens(self) -> list[list[TokenLogprob]]:
        if self.scores is None:
            return [[] for _ in self.prompts]
        return [r.tokens or [] for r in await self.scores]

    def prompt_of(self, index: int) -> str:
        return self.prompts[index // self.n]

    def echo_logprobs(self, index: int, scored: list[list[TokenLogprob]]) -> CompletionLogprobs:
        prompt = self.prompt_of(index)
        return _logprobs(scored[index // self.n], prompt, 0, self.top)

    def result_logprobs(self, index: int, r: SampleResult) -> CompletionLogprobs:
        base = len(self.prompt_of(index)) if self.echo else 0
        return _logprobs(r.tokens or [], r.text, base, self.top)

    def chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return sse(dump(Completion(
            id=self.id, created=self.created, model=self.model.name, choices=choices,
            usage=usage,
        )))  # fmt: skip


async def complete(model: LoadedModel, req: CompletionRequest, request: Request) -> Completion:
    c = _Completion(model, req)

    async def run() -> tuple[list[list[TokenLogprob]], list[SampleResult]]:
        return await c.prompt_tokens(), await c.job.results()

    scored, results = await _unless_disconnected(run(), request, c.cancel)
    choices = []
    for i, r in enumerate(results):
        logprobs = None
        if c.want_logprobs:
            logprobs = (
                c.echo_logprobs(i, scored)
                if c.echo
                else CompletionLogprobs(top_logprobs=[] if c.top else None)
            )
            logprobs.extend(c.result_logprobs(i, r))
        choices.append(CompletionChoice(
            text=(c.prompt_of(i) if c.echo else "") + r.text, index=i, logprobs=logprobs,
            finish_reason=_finish(r.finish_reason),  # type: ignore[arg-type]
            seed=r.seed,
        ))  # fmt: skip
    return Completion(
        id=c.id, created=c.created, model=model.name, choices=choices,
        usage=_usage(c.gens, c.n, results),
    )  # fmt: skip


def start_completion(model: LoadedModel, req: CompletionRequest) -> _Completion:
    return _Completion(model, req)


async def stream_completion(c: _Completion) -> AsyncIterator[str]:
    """OpenAI's stream: text chunks per choice, a last chunk with its finish_reason, [DONE]."""
    results: list[SampleResult] = []
    try:
        scored = await c.prompt_tokens()
        if c.echo:
            for i in range(len(c.gens)):
                lp = c.echo_logprobs(i, scored) if c.want_logprobs else None
                choice = CompletionChoice(
                    text=c.prompt_of(i), index=i, logprobs=lp, finish_reason=None, seed=None
                )
                yield c.chunk([choice])
        while len(results) < len(c.gens):
            chunk = []
            for ev in await _waiting(c.job.events):
                if isinstance(ev, Delta):
                    chunk.append(c.chunk([CompletionChoice(
                        text=ev.text, index=ev.index, finish_reason=None, seed=None
                    )]))  # fmt: skip
                elif isinstance(ev, Finished):
                    results.append(ev.result)
                    lp = c.result_logprobs(ev.index, ev.result) if c.want_logprobs else None
                    chunk.append(c.chunk([CompletionChoice(
                        text="", index=ev.index, logprobs=lp,
                        finish_reason=_finish(ev.result.finish_reason),  # type: ignore[arg-type]
                        seed=ev.result.seed,
                    )]))  # fmt: skip
                elif isinstance(ev, Failed):
                    yield "".join(chunk) + sse(_stream_error(ev.error))
                    return
            yield "".join(chunk)
        if c.req.stream_options is not None and c.req.stream_options.include_usage:
            yield c.chunk([], usage=_usage(c.gens, c.n, results))
        yield sse("[DONE]")
    except Exception as e:  # after the 200 is sent, an error can only be an event
        yield sse(_stream_error(e))
    finally:
        if len(results) < len(c.gens):
            c.cancel()
