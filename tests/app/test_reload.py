"""Models added, replaced and removed while the service runs: nothing in flight fails."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from rnnlm.app.registry import model_dirs, version_of
from rnnlm.models.batch import Batch
from rnnlm.models.sampling import Generation
from tests.app.conftest import make_client, make_endless
from tests.conftest import make_checkpoint


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_checkpoint(root / "char", "char")
    return root


def _names(client) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {m["name"]: m for m in client.get("/models").json()["models"]}


def test_a_new_model_is_served_after_a_reload(models: Path) -> None:
    with make_client(models) as client:
        first = _names(client)["char"]
        assert len(first["version"]) == 16 and first["loaded_at"].endswith("+00:00")
        make_checkpoint(models / "word", "word", "gru")
        assert client.post("/score", json={"model": "word", "texts": ["a"]}).status_code == 404
        report = client.post("/admin/reload").json()
        assert report == {"added": ["word"], "replaced": [], "removed": [], "failed": {}}
        assert client.post("/score", json={"model": "word", "texts": ["a"]}).status_code == 200
        again = client.post("/admin/reload").json()  # nothing changed: nothing done
        assert again == {"added": [], "replaced": [], "removed": [], "failed": {}}
        assert _names(client)["char"]["version"] == first["version"]


def test_a_replaced_model_gets_a_new_version_and_a_removed_one_goes(models: Path) -> None:
    with make_client(models) as client:
        before = client.post("/score", json={"texts": ["the cat"]}).json()["results"][0]
        old_version = _names(client)["char"]["version"]
        shutil.rmtree(models / "char")
        make_checkpoint(models / "char", "char", seed=7)  # other weights, same name
        assert client.post("/admin/reload").json()["replaced"] == ["char"]
        after = client.post("/score", json={"texts": ["the cat"]}).json()["results"][0]
        assert after["logprob"] != pytest.approx(before["logprob"])
        assert _names(client)["char"]["version"] != old_version
        shutil.rmtree(models / "char")
        assert client.post("/admin/reload").json()["removed"] == ["char"]
        assert client.post("/score", json={"texts": ["a"]}).status_code == 404


def test_a_broken_replacement_leaves_the_old_version_serving(models: Path) -> None:
    with make_client(models) as client:
        version = _names(client)["char"]["version"]
        (models / "char" / "config.json").write_text("{broken")
        report = client.post("/admin/reload").json()
        assert "char" in report["failed"] and "not valid JSON" in report["failed"]["char"]
        char = _names(client)["char"]
        assert char["status"] == "ready" and char["version"] == version
        assert "not valid JSON" in char["reload_error"]
        assert client.post("/score", json={"texts": ["a"]}).status_code == 200
        # The same broken file is not retried at every reload.
        assert client.post("/admin/reload").json()["failed"] == {}


def test_requests_in_flight_finish_on_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    make_endless(root / "endless")
    with make_client(root, default_model="endless") as client:
        # The old version's steps wait until the reload is done, so the long request is
        # in flight through it however fast the engine is.
        old = client.app.state.registry.models["endless"].engine  # type: ignore[attr-defined]
        held, release = threading.Event(), threading.Event()
        step = Batch.step

        def held_step(batch: Batch) -> list[Generation]:
            if batch.engine is old and not release.is_set():
                held.set()
                release.wait(60)  # a hang guard
            return step(batch)

        monkeypatch.setattr(Batch, "step", held_step)
        results: dict[str, object] = {}

        def long_request() -> None:
            r = client.post("/sample", json={"max_tokens": 1000, "seed": 1})
            results["status"] = r.status_code
            results["tokens"] = r.json()["samples"][0]["num_tokens"]

        t = threading.Thread(target=long_request)
        t.start()
        try:
            assert held.wait(60), "the long request never started"
            shutil.rmtree(root / "endless")
            make_endless(root / "endless")  # rewritten: a new version
            (root / "endless" / "config.json").write_text(
                (root / "endless" / "config.json").read_text().replace('"step": 0', '"step": 1')
            )
            assert client.post("/admin/reload").json()["replaced"] == ["endless"]
            short = client.post("/sample", json={"max_tokens": 5, "seed": 2})
            assert short.status_code == 200  # served by the new version while the old one works
        finally:
            release.set()
        t.join(120)
        assert results == {"status": 200, "tokens": 1000}


def test_hidden_directories_are_not_models(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / ".a.tmp-x1")
    shutil.copytree(tmp_path / "a", tmp_path / ".b.old")
    assert list(model_dirs(tmp_path)) == ["a"]
    assert version_of(tmp_path / "missing") == ""


def test_watching_picks_up_a_new_model(models: Path) -> None:
    with make_client(models, watch_interval_s=0.05) as client:
        make_checkpoint(models / "other", "char", seed=3)
        deadline = time.monotonic() + 30
        while "other" not in _names(client):
            assert time.monotonic() < deadline, "not picked up"
            time.sleep(0.05)


def test_reload_needs_the_key_when_one_is_set(models: Path) -> None:
    with make_client(models, api_key="s3cret") as client:
        assert client.post("/admin/reload").status_code == 401
        ok = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_sighup_reloads_a_real_server(tmp_path: Path) -> None:
    import signal

    from tests.e2e.live import live_server

    root = tmp_path / "models"
    make_checkpoint(root / "char", "char")
    with live_server(root) as live:
        make_checkpoint(root / "late", "char", seed=5)
        live.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            names = [m["name"] for m in httpx.get(f"{live.base}/models").json()["models"]]
            if "late" in names:
                break
            assert live.proc.poll() is None, "SIGHUP ended the server"
            assert time.monotonic() < deadline, names
            time.sleep(0.1)


def test_the_heap_is_frozen_while_serving_and_a_replaced_model_is_still_freed(
    models: Path,
) -> None:
    """Loaded models are left out of the GC's full collections (gc.freeze); a reload
    thaws the heap so that the version it replaced is freed, even one in a reference
    cycle (a frozen cycle never is), then freezes it again."""
    import gc
    import weakref

    with make_client(models) as client:
        assert gc.get_freeze_count() > 0
        registry = client.app.state.registry  # type: ignore[attr-defined]
        engine = registry.models["char"].engine
        engine.cycle = engine  # refcounting alone would never free it: only the GC can
        old = weakref.ref(engine)
        del engine
        shutil.rmtree(models / "char")
        make_checkpoint(models / "char", "char", seed=7)
        assert client.post("/admin/reload").json()["replaced"] == ["char"]
        deadline = time.monotonic() + 20
        while (old() is not None or gc.get_freeze_count() == 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert old() is None, "the replaced model was never freed"
        assert gc.get_freeze_count() > 0, "the heap was not frozen again"
        assert client.post("/score", json={"texts": ["the cat"]}).status_code == 200
    assert gc.get_freeze_count() == 0  # stopping thaws it
