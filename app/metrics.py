"""Prometheus metrics, in a registry of the app's own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "rnnlm_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "rnnlm_request_seconds", "HTTP request latency, to the last byte",
            ["method", "route"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.tokens_generated = Counter(
            "rnnlm_tokens_generated", "tokens sampled", ["model"], registry=r
        )
        self.tokens_scored = Counter("rnnlm_tokens_scored", "tokens scored", ["model"], registry=r)
        self.batch_size = Histogram(
            "rnnlm_batch_size", "sequences per decoding step", ["model"], buckets=_SIZES,
            registry=r,
        )  # fmt: skip
        self.score_batch_size = Histogram(
            "rnnlm_score_batch_size", "texts per scoring call", ["model"], buckets=_SIZES,
            registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "rnnlm_step_seconds", "time of one decoding step", ["model"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("rnnlm_queue_depth", "requests waiting", ["model"], registry=r)
        self.running = Gauge(
            "rnnlm_running_sequences", "sequences in the batch", ["model"], registry=r
        )
        self.rejected = Counter(
            "rnnlm_rejected", "requests refused because the queue was full", ["model"], registry=r
        )
