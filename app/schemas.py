"""Wire schemas: what clients send and receive. The engine never sees these.

Static bounds live on the fields; limits that come from `Settings` are checked
by each request's `check(settings)`, and `to_params()` converts a request into
the engine's own `SampleParams`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict
from starlette.responses import Response

from rnnlm.app.config import Settings
from rnnlm.app.errors import InvalidField, TooLarge
from rnnlm.models.adapt import DEFAULT_CACHE, DEFAULT_LR, MAX_CACHE, MAX_LR, Adaptation
from rnnlm.models.results import SampleResult, ScoreResult, TokenLogprob
from rnnlm.models.sampling import SEED_SPACE, SampleParams

SEED_MAX = SEED_SPACE - 1  # the largest seed the engine takes
SAMPLE_MAX_TOKENS = 100  # defaults, lowered to the server's RNNLM_MAX_TOKENS when over it
COMPLETION_MAX_TOKENS = 16  # OpenAI's


def _valid_unicode(s: str) -> str:
    """JSON allows lone surrogates (\\ud800); they are not text and cannot be sent back."""
    for i, ch in enumerate(s):
        if "\ud800" <= ch <= "\udfff":
            raise ValueError(f"lone UTF-16 surrogate U+{ord(ch):04X} at character {i}")
    return s


def _json_int(v: Any) -> Any:
    """JSON integers (and 2.0) only: not "2", not true. JSON Schema's `integer`."""
    if isinstance(v, str | bool):
        raise ValueError("Input should be a valid integer")
    return v


Text = Annotated[str, AfterValidator(_valid_unicode)]
T = TypeVar("T")
# Requests are validated strictly (no "1" for 1, no 0 for false), as their schema says;
# integers alone are lax, so that 2.0 counts as 2, as in JSON Schema. Bounds of an
# optional integer go inside: JsonInt[Annotated[int, Field(ge=0)]] | None.
JsonInt = Annotated[T, Strict(False), BeforeValidator(_json_int)]
NonNegative = JsonInt[Annotated[int, Field(ge=0)]]
ModelName = Annotated[
    Text | None,
    Field(
        default=None, max_length=200, description="a loaded model (default: the server's default)"
    ),
]

_NATIVE = ConfigDict(extra="forbid", strict=True)


def shown(value: int) -> str:
    """A number for an error message: a 4,000-digit one is not repeated back."""
    digits = len(str(abs(value)))
    return str(value) if digits <= 20 else f"a {digits}-digit number"


def check_stop(stop: list[str], settings: Settings, param: str = "stop") -> None:
    if len(stop) > settings.max_stop:
        raise InvalidField(
            f"{param}: at most {settings.max_stop} stop strings, got {len(stop)}", param
        )
    for s in stop:
        if not s:
            raise InvalidField(f"{param}: stop strings must not be empty", param)
        if len(s) > settings.max_stop_chars:
            raise InvalidField(
                f"{param}: stop strings are at most {settings.max_stop_chars} characters, "
                f"got {len(s)}",
                param,
            )


def check_text(text: str, settings: Settings, param: str) -> None:
    if len(text) > settings.max_text_chars:
        raise TooLarge(
            f"{param}: at most {settings.max_text_chars} characters, got {len(text)}", param
        )


def check_max_tokens(value: int, settings: Settings) -> None:
    if value > settings.max_tokens:
        raise InvalidField(
            f"max_tokens: at most {settings.max_tokens} on this server, got {shown(value)}",
            "max_tokens",
        )


def check_top(value: int, settings: Settings, param: str) -> None:
    if value > settings.max_top_logprobs:
        raise InvalidField(
            f"{param}: at most {settings.max_top_logprobs} on this server, got {shown(value)}",
            param,
        )


# ----------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="what went wrong, for a person to act on")
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    param: str | None = Field(description="the field at fault, dotted (texts.3), or null")
    code: str | None = Field(description="a stable machine-readable code, or null")


class ErrorResponse(BaseModel):
    """The one shape of every error, whatever its status."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


_ERROR_STATUSES = {
    400: "malformed body (not UTF-8, not JSON); on /v1/* also a bad field, as OpenAI does",
    401: "missing or wrong API key (only when RNNLM_API_KEY is set)",
    404: "no such model",
    413: "body, text or list over the server's limits",
    422: "a bad or unknown field, named in `param`",
    503: "queue full or models not loaded yet: retry after `Retry-After` seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route's errors: each in the one error shape."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        doc: dict[str, Any] = {"model": ErrorResponse, "description": _ERROR_STATUSES[status]}
        if status == 503:
            doc["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
            }
        out[status] = doc
    return out


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# ---------------------------------------------------------------------- /sample


class SampleRequest(BaseModel):
    model_config = _NATIVE

    model: ModelName
    prompt: Text = Field(default="", description="text the samples continue; may be empty")
    max_tokens: JsonInt[int] = Field(
        default=SAMPLE_MAX_TOKENS, ge=0, description="tokens to generate at most (<eos> counts)"
    )
    temperature: float = Field(default=1.0, ge=0, le=100, description="0 is greedy")
    top_k: JsonInt[int] = Field(
        default=0, ge=0, le=1_000_000, description="keep the k most likely; 0: all"
    )
    top_p: float = Field(
        default=1.0, gt=0, le=1, description="nucleus: smallest set with this mass"
    )
    min_p: float = Field(
        default=0.0, ge=0, lt=1, description="drop tokens below min_p × the top one"
    )
    seed: JsonInt[Annotated[int, Field(ge=0, le=SEED_MAX)]] | None = Field(
        default=None, description="sample i uses (seed + i) mod 2**63; drawn when absent"
    )
    stop: list[Text] | Text | None = Field(
        default=None, description="stop strings, not included in the text"
    )
    n: JsonInt[int] = Field(default=1, ge=1, description="number of samples")
    stream: bool = Field(default=False, description="send Server-Sent Events as text is produced")
    logprobs: bool = Field(default=False, description="return each token's log-probability")
    top_logprobs: JsonInt[int] = Field(
        default=0, ge=0, description="and this many alternatives per token"
    )

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check(self, settings: Settings) -> None:
        if "max_tokens" not in self.model_fields_set:  # the default never exceeds the server's
            self.max_tokens = min(self.max_tokens, settings.max_tokens)
        check_text(self.prompt, settings, "prompt")
        check_max_tokens(self.max_tokens, settings)
        check_stop(self.stop_list, settings)
        check_top(self.top_logprobs, settings, "top_logprobs")
        if self.n > settings.max_n:
            raise InvalidField(f"n: at most {settings.max_n} samples, got {shown(self.n)}", "n")

    def to_params(self) -> SampleParams:
        return SampleParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            seed=self.seed,
            stop=self.stop_list,
            logprobs=self.logprobs or self.top_logprobs > 0,
            top_logprobs=self.top_logprobs,
        )


class TopToken(BaseModel):
    token: str
    logprob: float


class TokenOut(BaseModel):
    id: int
    token: str
    logprob: float
    top: list[TopToken] | None = None

    @classmethod
    def of(cls, t: TokenLogprob) -> TokenOut:
        top = [TopToken(token=a, logprob=v) for a, v in t.top] if t.top is not None else None
        return cls(id=t.id, token=t.token, logprob=t.logprob, top=top)


class Sample(BaseModel):
    text: str
    finish_reason: Literal["eos", "length", "stop"]
    num_tokens: int
    logprob: float = Field(description="natural log, under the model's own distribution")
    seed: int = Field(description="the seed that reproduces this sample")
    tokens: list[TokenOut] | None = None

    @classmethod
    def of(cls, r: SampleResult) -> Sample:
        return cls(
            text=r.text,
            finish_reason=r.finish_reason,  # type: ignore[arg-type]
            num_tokens=r.num_tokens,
            logprob=r.logprob,
            seed=r.seed,
            tokens=[TokenOut.of(t) for t in r.tokens] if r.tokens is not None else None,
        )


class SampleResponse(BaseModel):
    model: str
    samples: list[Sample]
    usage: Usage


# ----------------------------------------------------------------------- /score


class AdaptOptions(BaseModel):
    model_config = _NATIVE

    lr: float = Field(
        default=DEFAULT_LR, ge=0, le=MAX_LR, description="SGD rate of the RNN's step; 0: no step"
    )
    decay: float = Field(
        default=0.0, ge=0, le=1,
        description="after each step, the fraction of the way back to the trained weights",
    )  # fmt: skip
    cache: int = Field(
        default=DEFAULT_CACHE, ge=0, le=MAX_CACHE,
        description="tokens of the texts already read that the cache holds, the most recent; "
        "its guess is mixed in with a weight learnt from the text read. 0: no cache",
    )  # fmt: skip

    def to_adaptation(self) -> Adaptation:
        return Adaptation(self.lr, self.decay, self.cache)


class ScoreRequest(BaseModel):
    model_config = _NATIVE

    model: ModelName
    texts: list[Text] = Field(description="texts to score; the empty string is valid")
    bos: bool = Field(default=True, description="condition the first token on <bos>")
    eos: bool = Field(default=True, description="add P(<eos>) at the end")
    per_token: bool = Field(default=False, description="return each token's log-probability")
    adapt: AdaptOptions | None = Field(
        default=None,
        description="score the texts in order as one document, the model learning from "
        "each text once scored: the RNN's gradient step (dynamic evaluation) and a cache of "
        "the texts read ({} for the defaults); each request adapts its own copy, nothing "
        "carries over to another. Absent: every text scored on its own",
    )

    def check(self, settings: Settings) -> None:
        if len(self.texts) > settings.max_texts:
            raise TooLarge(
                f"texts: at most {settings.max_texts} texts per request, got {len(self.texts)}",
                "texts",
            )
        for i, t in enumerate(self.texts):
            check_text(t, settings, f"texts.{i}")


class ScoreOut(BaseModel):
    text: str
    logprob: float = Field(description="natural log")
    log10prob: float = Field(description="log base 10, KenLM's unit")
    num_tokens: int = Field(description="tokens scored, <eos> included")
    perplexity: float | None = Field(description="exp(-logprob / num_tokens); null for none")
    oov_count: int = Field(description="tokens outside the vocabulary (<unk>)")
    backward_logprob: float | None = Field(
        default=None,
        description="bidirectional models: the backward model's logprob of the text, read "
        "reversed, over as many tokens; null otherwise",
    )
    average_logprob: float | None = Field(
        default=None,
        description="bidirectional models: (logprob + backward_logprob) / 2; null otherwise",
    )
    rnn_logprob: float | None = Field(
        default=None,
        description="models with an n-gram: the RNN's logprob alone (logprob is the "
        "mixture's); null otherwise",
    )
    ngram_logprob: float | None = Field(
        default=None,
        description="models with an n-gram: the n-gram's logprob alone; null otherwise",
    )
    tokens: list[TokenOut] | None = None

    @classmethod
    def of(cls, r: ScoreResult) -> ScoreOut:
        return cls(
            text=r.text,
            logprob=r.logprob,
            log10prob=r.log10prob,
            num_tokens=r.num_tokens,
            perplexity=r.perplexity,
            oov_count=r.oov_count,
            backward_logprob=r.backward_logprob,
            average_logprob=r.average_logprob,
            rnn_logprob=r.rnn_logprob,
            ngram_logprob=r.ngram_logprob,
            tokens=[TokenOut.of(t) for t in r.tokens] if r.tokens is not None else None,
        )


class ScoreResponse(BaseModel):
    model: str
    results: list[ScoreOut]


# ------------------------------------------------------------- /v1/completions


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's legacy completions request. Unknown fields are ignored, as vLLM does."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: Text = Field(max_length=200)
    prompt: Text | list[Text] = ""
    max_tokens: NonNegative | None = COMPLETION_MAX_TOKENS
    temperature: float | None = Field(default=1.0, ge=0, le=100)
    top_p: float | None = Field(default=1.0, gt=0, le=1)
    top_k: JsonInt[Annotated[int, Field(ge=0, le=1_000_000)]] | None = Field(
        default=None, description="extension (as vLLM)"
    )
    min_p: float | None = Field(default=None, ge=0, lt=1, description="extension (as vLLM)")
    n: JsonInt[Annotated[int, Field(ge=1)]] | None = 1
    stop: Text | list[Text] | None = None
    seed: JsonInt[Annotated[int, Field(ge=0, le=SEED_MAX)]] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: NonNegative | None = None
    echo: bool | None = False
    best_of: JsonInt[Annotated[int, Field(ge=1, le=1)]] | None = Field(
        default=None, description="only 1: this server makes no choice among samples"
    )
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check(self, settings: Settings) -> None:
        prompts, n = self.prompts, self.n or 1
        if not prompts:
            raise InvalidField("prompt: give at least one prompt", "prompt")
        if len(prompts) > settings.max_texts:
            raise TooLarge(f"prompt: at most {settings.max_texts} prompts", "prompt")
        for i, p in enumerate(prompts):
            check_text(p, settings, "prompt" if isinstance(self.prompt, str) else f"prompt.{i}")
        if self.max_tokens is None or "max_tokens" not in self.model_fields_set:
            self.max_tokens = min(COMPLETION_MAX_TOKENS, settings.max_tokens)
        check_max_tokens(self.max_tokens, settings)
        check_stop(self.stop_list, settings)
        check_top(self.logprobs or 0, settings, "logprobs")
        if n > settings.max_n:
            raise InvalidField(f"n: at most {settings.max_n}, got {shown(n)}", "n")
        if n * len(prompts) > settings.max_batch:
            raise InvalidField(
                f"n: n × number of prompts must be at most {settings.max_batch}, "
                f"got {n * len(prompts)}",
                "n",
            )
        unsupported = [
            ("suffix", self.suffix not in (None, "")),
            ("presence_penalty", self.presence_penalty not in (None, 0)),
            ("frequency_penalty", self.frequency_penalty not in (None, 0)),
            ("logit_bias", bool(self.logit_bias)),
        ]
        for name, used in unsupported:
            if used:
                raise InvalidField(f"{name} is not supported by this server", name)

    def to_params(self) -> SampleParams:
        top = self.logprobs or 0
        return SampleParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else COMPLETION_MAX_TOKENS,
            temperature=self.temperature if self.temperature is not None else 1.0,
            top_k=self.top_k or 0,
            top_p=self.top_p if self.top_p is not None else 1.0,
            min_p=self.min_p or 0.0,
            seed=self.seed,
            stop=self.stop_list,
            logprobs=self.logprobs is not None,
            top_logprobs=top,
        )


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)

    def extend(self, other: CompletionLogprobs) -> None:
        self.tokens += other.tokens
        self.token_logprobs += other.token_logprobs
        if self.top_logprobs is not None and other.top_logprobs is not None:
            self.top_logprobs += other.top_logprobs
        self.text_offset += other.text_offset


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None
    seed: int | None = Field(default=None, description="extension: the seed that reproduces it")


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rnnlm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def json_response(model: BaseModel) -> Response:
    """The answer as JSON, encoded once by pydantic's own serializer: returning a Response
    spares FastAPI validating the model again against `response_model` and re-encoding it
    (the route's `response_model` still documents it)."""
    return Response(model.model_dump_json(), media_type="application/json")
