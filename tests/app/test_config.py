"""Settings from the environment, and `serve()` refusing what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rnnlm.app.config import Settings
from rnnlm.app.main import serve
from rnnlm.models.errors import RnnlmError


def test_environment_sets_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RNNLM_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("RNNLM_MAX_TOKENS", "77")
    monkeypatch.setenv("RNNLM_API_KEY", "hush-42")
    monkeypatch.setenv("RNNLM_CORS_ORIGINS", '["http://a"]')
    s = Settings()
    assert s.models_dir == tmp_path and s.max_tokens == 77 and s.cors_origins == ["http://a"]
    assert s.api_key is not None and s.api_key.get_secret_value() == "hush-42"
    assert "hush-42" not in repr(s)


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ValidationError, match="max_n"):
        Settings(max_n=65, max_batch=64)


def test_serve_explains_missing_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RNNLM_MODELS_DIR", raising=False)
    with pytest.raises(RnnlmError, match="--models"):
        serve(None, None, None, None)
    with pytest.raises(RnnlmError, match="no such directory"):
        serve(str(tmp_path / "nope"), None, None, None)
    monkeypatch.setenv("RNNLM_MAX_BATCH", "lots")
    with pytest.raises(RnnlmError, match="max_batch"):
        serve(str(tmp_path), None, None, None)


def test_the_service_sets_the_gil_switch_interval(app_models_dir: Path) -> None:
    import sys

    from tests.app.conftest import make_client

    before = sys.getswitchinterval()
    try:
        with make_client(app_models_dir, switch_interval_s=0.0007) as c:
            assert c.get("/health").status_code == 200
            assert sys.getswitchinterval() == pytest.approx(0.0007)
    finally:
        sys.setswitchinterval(before)
    with pytest.raises(ValidationError, match="switch_interval_s"):
        Settings(switch_interval_s=0)


def test_serve_hands_keep_alive_and_shutdown_timeouts_to_uvicorn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    serve(str(tmp_path), None, None, None)
    # Above the 5 s of httpx's pool and the 60 s of common load balancers, so that the
    # client side closes an idle connection first (bench/load.py saw a ReadError at 5 s).
    assert seen["timeout_keep_alive"] == 75 and seen["timeout_graceful_shutdown"] == 5
    monkeypatch.setenv("RNNLM_KEEP_ALIVE_S", "120")
    monkeypatch.setenv("RNNLM_SHUTDOWN_TIMEOUT_S", "30")
    serve(str(tmp_path), None, None, None)
    assert seen["timeout_keep_alive"] == 120 and seen["timeout_graceful_shutdown"] == 30


def test_the_blas_setting_reaches_the_engines(app_models_dir: Path) -> None:
    from tests.app.conftest import make_client

    with make_client(app_models_dir, blas="numpy") as c:
        assert c.get("/health").status_code == 200
        engine = c.app.state.registry.models["char"].engine  # type: ignore[attr-defined]
        step = engine.host_step
        assert step is not None and step.output is not None
        products = [step.output, *(p for layer in step.layers for p in (layer.ih, layer.hh))]
        assert all(p.numpy_few and p.numpy_many for p in products)
    with pytest.raises(ValidationError, match="blas"):
        Settings(blas="mkl")


def test_the_stream_interval_reaches_the_workers(app_models_dir: Path) -> None:
    from tests.app.conftest import make_client

    with make_client(app_models_dir, stream_interval_s=0.25) as c:
        assert c.get("/health").status_code == 200
        worker = c.app.state.registry.models["char"].worker  # type: ignore[attr-defined]
        assert worker.stream_interval_s == 0.25
    assert Settings().stream_interval_s == 0.01
    for bad in (-0.1, 2):
        with pytest.raises(ValidationError, match="stream_interval_s"):
            Settings(stream_interval_s=bad)


def test_every_setting_is_documented_with_its_default() -> None:
    """docs/service.md's settings table is the Settings class: every field, its default."""
    import re

    from rnnlm.app.config import Settings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    rows = dict(re.findall(r"^\| `RNNLM_(\w+)` \| ([^|]+) \|", doc, re.M))
    fields = Settings.model_fields
    assert set(rows) == {name.upper() for name in fields}
    for name, f in fields.items():
        default = f.default if f.default_factory is None else f.default_factory()
        shown = "none" if default is None else ("`[]`" if default == [] else f"`{default}`")
        assert rows[name.upper()].strip() == shown, name
