"""Property-based fuzzing of the live HTTP API from its own OpenAPI document (schemathesis).

The server runs as a real process on loopback with an API key and small limits,
and the document is built from the same settings, so it states exactly what the
server accepts. Every operation gets a fixed number of generated requests,
valid and invalid (schemathesis' positive and negative modes), and every
response is checked: no 5xx, status and body as documented, valid data accepted,
invalid data refused, the key enforced; and each error in the one error shape.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from rnnlm.app.config import Settings
from rnnlm.app.main import create_app
from tests.e2e.live import live_server

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Small limits: boundary cases stay cheap and every request finishes quickly.
LIMITS = {"max_tokens": 24, "max_n": 4, "max_texts": 8, "max_text_chars": 300, "max_stop": 3,
          "max_stop_chars": 8, "max_top_logprobs": 5, "max_batch": 32}  # fmt: skip
MODELS = ("char", "word")
# Per operation and phase. The suite draws the same examples every run, so CI is
# repeatable; FUZZ_EXAMPLES=1000 hunts deeper, with fresh random examples each run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
DERANDOMIZE = "FUZZ_EXAMPLES" not in os.environ

CONFIG = SchemathesisConfig.from_dict(
    {
        # The contract (design.md): limits are 413, bad fields 422 (400 on /v1/*).
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 413, 422]}},
        "generation": {"max-examples": EXAMPLES},
    }
)
schema = schemathesis.openapi.from_dict(
    create_app(Settings(api_key=KEY, **LIMITS)).openapi(),  # type: ignore[arg-type]
    config=CONFIG,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(models_dir / "char", root / "char")
    shutil.copytree(models_dir / "word", root / "word")
    env = {"RNNLM_API_KEY": KEY, **{f"RNNLM_{k.upper()}": str(v) for k, v in LIMITS.items()}}
    with live_server(root, env) as live:
        yield live.base


def _aim_at_loaded_models(case: Case[Any]) -> None:
    """Point two in three valid requests at a loaded model (a drawn name is a 404)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return  # an invalid `model` must stay invalid
    for where, key in ((case.body, "model"), (case.path_parameters, "name")):
        name = where.get(key) if isinstance(where, dict) else None
        if isinstance(where, dict) and isinstance(name, str):
            pick = (len(name) + 1) % 3
            if pick:
                where[key] = MODELS[pick - 1]


def _one_error_shape(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert "None" not in err["message"], err  # a message a person can act on


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=list(HealthCheck),
)
def test_api_holds_to_its_schema(case: Case[Any], base: str) -> None:
    _aim_at_loaded_models(case)
    response = case.call_and_validate(base_url=base, headers=AUTH, timeout=30)
    assert response.status_code < 500, response.text
    _one_error_shape(response)


def test_the_fuzzed_document_is_the_one_the_server_serves(base: str) -> None:
    served = httpx.get(f"{base}/openapi.json", headers=AUTH, timeout=10).json()
    assert served == schema.raw_schema
    assert served["components"]["schemas"]["SampleRequest"]["properties"]["n"]["maximum"] == 4
