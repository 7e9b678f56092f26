"""The loaded models: every subdirectory of the models directory holding a config.json.

A checkpoint that fails to load is logged and listed with its error; the
others are served all the same.

Models change while the service runs: `reload()` (on SIGHUP, `POST
/admin/reload`, or every `watch_interval_s` when watching) reads the directory
again. A model that appeared is loaded; one whose `config.json` changed (a new
checkpoint written over it: the weights' and the n-gram's hashes are in that
file) is loaded beside the old one and then takes its place; one that went is
dropped. The swap happens on the event loop, between requests: a request picks
its model and hands its work to that model's worker in one step, so work
submitted before the swap runs on the old version's worker, which finishes
what it holds and then stops, and work after it goes to the new one. No
request fails because of a reload. A replacement that fails to load leaves the
old version serving, and says why in `/models`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlm.app.config import Settings
from rnnlm.app.errors import ModelNotFound
from rnnlm.app.metrics import Metrics
from rnnlm.app.scheduler import ModelWorker
from rnnlm.models.checkpoint import CONFIG, load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.errors import RnnlmError

log = logging.getLogger("rnnlm.app")


@dataclass
class LoadedModel:
    name: str
    engine: Engine
    worker: ModelWorker
    info: dict[str, Any]
    version: str = ""


def model_dirs(root: Path) -> dict[str, Path]:
    """The checkpoints under `root`, by name. Hidden directories (a save in progress
    writes `.NAME.tmp-*`, a replaced one is `.NAME.old` for a moment) are skipped."""
    if not root.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and (p / CONFIG).is_file()
    }


def version_of(path: Path) -> str:
    """A checkpoint's version: the hash of its config.json (which holds the hashes of
    its weights and n-gram). Empty when it cannot be read."""
    try:
        return hashlib.sha256((path / CONFIG).read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


def _freeze_heap() -> None:
    """Leave every object alive now, the loaded models above all (the demo's: ~220k
    objects), out of the cyclic garbage collector's full collections (`gc.freeze`).

    Under load those came every ~8 s and held the GIL, so the event loop and the engine,
    for 80-97 ms each (the demo, 32 streams); with the models frozen, 9-11 ms. A frozen
    object in a reference cycle is never freed (the engines measured hold none, but
    nothing stops a model from holding one), so a reload thaws the heap and it is frozen
    again once the versions it replaced have finished, and stopping thaws it for good."""
    gc.collect()
    gc.freeze()


@dataclass
class Registry:
    models: dict[str, LoadedModel] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why
    default: str | None = None
    settings: Settings | None = None
    metrics: Metrics | None = None
    _failed_versions: dict[str, str] = field(default_factory=dict)
    _retired: list[ModelWorker] = field(default_factory=list)  # draining after a reload
    _lock: asyncio.Lock | None = None
    _refreeze: asyncio.Task[None] | None = None  # see _freeze_heap

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> Registry:
        reg = cls(settings=settings, metrics=metrics)
        root = settings.models_dir
        if root is None or not root.is_dir():
            log.error("models directory %s does not exist: no model is served", root)
            return reg
        for name, path in model_dirs(root).items():
            loaded = reg._load(name, path)
            if loaded is not None:
                reg.models[name] = loaded
        reg._pick_default()
        return reg

    def _pick_default(self) -> None:
        wanted = self.settings.default_model if self.settings else None
        self.default = wanted or next(iter(sorted(self.models)), None)
        if wanted and wanted not in self.models:
            log.error("default model %r is not loaded", wanted)

    def _load(self, name: str, path: Path) -> LoadedModel | None:
        """Load one checkpoint with a worker (not started); None, and recorded, if it fails."""
        assert self.settings is not None and self.metrics is not None
        s = self.settings
        version = version_of(path)
        try:
            engine = Engine(load_checkpoint(path, s.device), s.max_batch, blas=s.blas)
            engine.prepare_sampling()  # before the first request, and counted in /models
        except (RnnlmError, OSError, ValueError) as e:
            root = s.models_dir
            why = str(e).replace(f"{root}/", "") if root else str(e)
            log.error("model %s failed to load: %s", name, why)
            self.failed[name] = why
            self._failed_versions[name] = version
            return None
        self.failed.pop(name, None)
        self._failed_versions.pop(name, None)
        worker = ModelWorker(
            name, engine, s.max_batch, s.max_queue, s.retry_after_s, self.metrics,
            stream_interval_s=s.stream_interval_s,
        )  # fmt: skip
        info = describe(path, engine) | {"version": version, "loaded_at": _now()}
        log.info("model %s loaded from %s (version %s)", name, path, version)
        return LoadedModel(name, engine, worker, info, version)

    def start(self) -> None:
        for m in self.models.values():
            m.worker.start()
        _freeze_heap()

    def stop(self) -> None:
        if self._refreeze is not None:
            self._refreeze.cancel()
        gc.unfreeze()
        for w in [m.worker for m in self.models.values()] + self._retired:
            w.stop()

    def _retire(self, worker: ModelWorker) -> None:
        worker.retire()
        self._retired = [w for w in self._retired if w.alive] + [worker]

    # ------------------------------------------------------------------ reloading

    def changes(self) -> dict[str, list[str]]:
        """What a reload would do: names to add, replace and remove (and retry)."""
        root = self.settings.models_dir if self.settings else None
        found = {n: version_of(p) for n, p in model_dirs(root).items()} if root else {}
        out: dict[str, list[str]] = {"added": [], "replaced": [], "removed": []}
        for name, version in found.items():
            if name in self.models:
                changed = version != self.models[name].version
                if changed and self._failed_versions.get(name) != version:  # not retried
                    out["replaced"].append(name)
            elif self._failed_versions.get(name) != version or name not in self.failed:
                out["added"].append(name)
        # NAME gone but .NAME.old there: a save is between its two renames, not a removal.
        moving = {n for n in self.models if root and (root / f".{n}.old").is_dir()}
        out["removed"] = [n for n in self.models if n not in found and n not in moving]
        out["removed"] += [n for n in self.failed if n not in found and n not in self.models]
        return out

    async def reload(self) -> dict[str, Any]:
        """Bring the served models in line with the directory (see the module's doc)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            todo = self.changes()
            if any(todo.values()):
                gc.unfreeze()  # what this reload replaces must be free to go (_freeze_heap)
            root = self.settings.models_dir if self.settings else None
            paths = model_dirs(root) if root else {}
            report: dict[str, Any] = {"added": [], "replaced": [], "removed": [], "failed": {}}
            for name in todo["added"] + todo["replaced"]:
                # Loading takes a while: off the event loop, so requests go on meanwhile.
                new = await asyncio.to_thread(self._load, name, paths[name])
                if new is None:
                    report["failed"][name] = self.failed[name]
                    if name in self.models:  # the old version keeps serving
                        self.models[name].info["reload_error"] = self.failed.pop(name)
                    continue
                new.worker.start()
                old = self.models.get(name)
                self.models[name] = new  # from here on, requests get the new version
                if old is not None:
                    self._retire(old.worker)  # finishes what it holds, then its thread ends
                    report["replaced"].append(name)
                else:
                    report["added"].append(name)
            for name in todo["removed"]:
                self.failed.pop(name, None)
                self._failed_versions.pop(name, None)
                gone = self.models.pop(name, None)
                if gone is not None:
                    self._retire(gone.worker)
                    report["removed"].append(name)
            self._pick_default()
            if any(report[k] for k in ("added", "replaced", "removed", "failed")):
                log.info("models reloaded: %s", report)
            if any(todo.values()) and (self._refreeze is None or self._refreeze.done()):
                self._refreeze = asyncio.get_running_loop().create_task(self._freeze_when_retired())
            return report

    async def _freeze_when_retired(self) -> None:
        """Freeze the heap again once every version a reload replaced has finished."""
        assert self._lock is not None
        while True:
            await asyncio.sleep(0.5)
            async with self._lock:  # not halfway through another reload
                if not any(w.alive for w in self._retired):
                    self._retired = []
                    _freeze_heap()
                    return

    # ------------------------------------------------------------------ serving

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
        out += [
            {"name": n, "status": "failed", "error": e}
            for n, e in self.failed.items()
            if n not in self.models
        ]
        return sorted(out, key=lambda d: str(d["name"]))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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
        # The n-gram mixed with the RNN: order, λ (the RNN's weight; and one per mixing
        # bucket of histories, or null), memory; null without.
        "ngram": None
        if engine.ngram is None
        else {
            "order": engine.ngram.order,
            "lambda": engine.mix_weight,
            "lambda_buckets": None
            if engine.checkpoint.mix_buckets is None
            else engine.checkpoint.mix_buckets.tolist(),
            # λ from a gate on each part's distribution too (models/gate.py), or null
            "lambda_gate": None if engine.mix_gate is None else engine.mix_gate.to_dict(),
            "ngrams": sum(engine.ngram.counts()),
            "memory_bytes": engine.ngram.memory_bytes(),
            "source": cfg.get("ngram", {}).get("source"),
        },
        # The match model over the training text, mixed in over the n-gram's mixture:
        # how far it reaches back, μ per bucket, the text's tokens and the memory of
        # the text and its index (built on load); null without.
        "match": None
        if engine.match is None
        else {
            "max_len": engine.match.max_len,
            "mu": engine.match.mu.tolist(),
            "tokens": len(engine.match.stream),
            "memory_bytes": engine.match.nbytes(),
        },
    }
