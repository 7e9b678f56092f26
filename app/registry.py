"""The loaded models: every subdirectory of the models directory holding a config.json.

A checkpoint that fails to load is logged and listed with its error; the
others are served all the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import ModelNotFound
from app.metrics import Metrics
from app.scheduler import ModelWorker
from models.checkpoint import CONFIG, load_checkpoint
from models.engine import Engine
from models.errors import RnnlmError

log = logging.getLogger("rnnlm.app")


@dataclass
class LoadedModel:
    name: str
    engine: Engine
    worker: ModelWorker
    info: dict[str, Any]


@dataclass
class Registry:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why
    default: str | None = None

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> Registry:
        reg = cls()
        root = settings.models_dir
        if root is None or not root.is_dir():
            log.error("models directory %s does not exist: no model is served", root)
            return reg
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG).is_file()):
            try:
                engine = Engine(load_checkpoint(sub, settings.device), settings.max_batch)
            except (RnnlmError, OSError, ValueError) as e:
                why = str(e).replace(f"{root}/", "")
                log.error("model %s failed to load: %s", sub.name, why)
                reg.failed[sub.name] = why
                continue
            worker = ModelWorker(
                sub.name, engine, settings.max_batch, settings.max_queue,
                settings.retry_after_s, metrics,
            )  # fmt: skip
            reg.models[sub.name] = LoadedModel(sub.name, engine, worker, describe(sub, engine))
            log.info("model %s loaded from %s", sub.name, sub)
        reg.default = settings.default_model or next(iter(reg.models), None)
        if settings.default_model and settings.default_model not in reg.models:
            log.error("default model %r is not loaded", settings.default_model)
        return reg

    def start(self) -> None:
        for m in self.models.values():
            m.worker.start()

    def stop(self) -> None:
        for m in self.models.values():
            m.worker.stop()

    def get(self, name: str | None) -> LoadedModel:
        """The model a request names, or the default; 404 naming what is available."""
        wanted = name if name is not None else self.default
        if wanted is not None and wanted in self.models:
            return self.models[wanted]
        available = ", ".join(self.models) or "none"
        if wanted is None:
            raise ModelNotFound(f"no model is loaded (available: {available})", "model")
        if wanted in self.failed:
            raise ModelNotFound(f"model {wanted!r} failed to load: {self.failed[wanted]}", "model")
        raise ModelNotFound(f"model {wanted!r} not found (available: {available})", "model")

    def listing(self) -> list[dict[str, Any]]:
        out = [m.info for m in self.models.values()]
        out += [{"name": n, "status": "failed", "error": e} for n, e in self.failed.items()]
        return sorted(out, key=lambda d: str(d["name"]))


def describe(path: Path, engine: Engine) -> dict[str, Any]:
    """What /models says about a loaded model."""
    cfg = engine.checkpoint.config
    model = engine.model
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {
        "name": path.name,
        "status": "ready",
        "parameters": model.num_parameters(),
        "size_bytes": size,
        "cell": model.config.cell,
        "layers": model.config.layers,
        "hidden": model.config.hidden,
        "embedding": model.config.embedding,
        "mode": engine.checkpoint.mode,
        "tokenizer": cfg.get("tokenizer", {}),
        "training": cfg.get("training", {}),
        "metrics": cfg.get("metrics", {}),
        # The n-gram mixed with the RNN: order, λ (the RNN's weight), memory; null without.
        "ngram": None
        if engine.ngram is None
        else {
            "order": engine.ngram.order,
            "lambda": engine.mix_weight,
            "ngrams": sum(engine.ngram.counts()),
            "memory_bytes": engine.ngram.nbytes(),
            "source": cfg.get("ngram", {}).get("source"),
        },
    }
