"""Service settings: one class, read from `RNNLM_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; `RNNLM_MAX_TOKENS=512` sets `max_tokens`, and so on."""

    model_config = SettingsConfigDict(env_prefix="RNNLM_", extra="ignore")

    models_dir: Path | None = Field(
        default=None, description="directory whose subdirectories are checkpoints"
    )
    default_model: str | None = Field(
        default=None, description="model used when a request names none (default: first by name)"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key: SecretStr | None = Field(
        default=None,
        description="when set, every route but /health, /ready and / needs this Bearer token",
    )
    cors_origins: list[str] = Field(default_factory=list)
    log_level: str = "info"
    device: str = "cpu"
    torch_threads: int = Field(default=1, ge=1, description="torch CPU threads for the engine")
    blas: Literal["auto", "torch", "numpy"] = Field(
        default="auto",
        description="the library for the CPU decoding step's products: the faster for each "
        "weight, timed when a model loads (auto), or always torch's or numpy's",
    )
    switch_interval_s: float = Field(
        default=0.0002, gt=0, le=0.1,
        description="how soon the event loop hands the GIL back to a waiting engine thread "
        "(Python's default is 0.005)",
    )  # fmt: skip

    # Models that change while serving (see app/registry.py).
    watch_interval_s: float = Field(
        default=0.0, ge=0,
        description="look for new, replaced or removed models every this many seconds "
        "(0: only on SIGHUP or POST /admin/reload)",
    )  # fmt: skip

    # Scheduling.
    max_batch: int = Field(default=64, ge=1, le=4096, description="sequences stepped together")
    max_queue: int = Field(default=256, ge=1, description="requests waiting; past it: 503")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After of a 503")
    stream_interval_s: float = Field(
        default=0.01, ge=0, le=1,
        description="a streamed sample's new text goes out at most this often (its first "
        "text and its end at once); 0: after every token",
    )  # fmt: skip
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        description="idle keep-alive connections close after this; above the idle timeout of a "
        "load balancer or client pool (often 60 s, httpx 5 s), so that they close first",
    )
    shutdown_timeout_s: int = Field(
        default=5, ge=0, description="on SIGTERM, seconds in-flight requests get to finish"
    )

    # Request limits.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_tokens: int = Field(default=2048, ge=1, description="largest max_tokens a request may ask")
    max_n: int = Field(default=16, ge=1, description="most samples per request")
    max_texts: int = Field(default=256, ge=1, description="most texts per /score (prompts per /v1)")
    max_text_chars: int = Field(default=10_000, ge=1, description="longest text or prompt")
    max_stop: int = Field(default=4, ge=0, description="most stop strings")
    max_stop_chars: int = Field(default=64, ge=1, description="longest stop string")
    max_top_logprobs: int = Field(default=20, ge=0, description="most alternatives per token")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_n > self.max_batch:
            raise ValueError(f"max_n ({self.max_n}) must not exceed max_batch ({self.max_batch})")
        return self
