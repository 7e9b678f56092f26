"""The containers without a Docker engine: `Dockerfile` and `docker-compose.yml` are read
and checked against the real CLI, and the commands they run are run here: the image's
CMD (`rnnlm serve`) with its HEALTHCHECK, and the compose `train` service's script.
The image's build-time `rnnlm demo` is the command tests/e2e/test_cli.py runs.
`make docker-test` (docker/test.sh) runs the real images and compose with an engine."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rnnlm.cli import build_parser
from rnnlm.models.checkpoint import load_checkpoint
from tests.e2e.live import free_port, rnnlm_command, running

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def one(name: str) -> str:
    found = [rest for word, rest in instructions() if word == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def exec_form(rest: str) -> list[str]:
    argv = json.loads(rest)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}` and `${VAR:-default}`, enough for this file."""

    def sub(m: re.Match[str]) -> str:
        return env.get(m["name"]) or (m["default"] or "")

    out = re.sub(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}", sub, value)
    assert "$" not in out, value
    return out


def image_cmd() -> list[str]:
    return exec_form(one("CMD"))


def copied_to(dest: str) -> Path:
    """The file in this repository that the Dockerfile copies to `dest` (a path, or a
    command name found on the image's PATH in /usr/local/bin)."""
    dest = dest if "/" in dest else f"/usr/local/bin/{dest}"
    for word, rest in instructions():
        if word == "COPY" and rest.split()[-1] == dest:
            return ROOT / rest.split()[0]
    raise AssertionError(f"the Dockerfile copies nothing to {dest}")


def test_dockerfile_reads_right() -> None:
    steps = instructions()
    # The base and torch's index are build arguments, today's values their defaults.
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert [r for w, r in steps if w == "FROM"] == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in steps
    runs = [rest for word, rest in steps if word == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch" in r)
    project_at = next(i for i, r in enumerate(runs) if "pip install /tmp/src" in r)
    assert torch_at < project_at
    pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"] if d.startswith("torch"))  # fmt: skip
    assert runs[torch_at].count(pin) == 2  # from the wheelhouse, or from the index
    assert '--index-url "$TORCH_INDEX_URL"' in runs[torch_at]
    for at in (torch_at, project_at):  # with no network: docker/wheels/, --no-index
        assert "--no-index --find-links /tmp/wheels" in runs[at]
    assert ("COPY", "docker/wheels/ /tmp/wheels/") in steps
    # Every package setuptools installs is copied in, and every COPY source exists.
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            assert (ROOT / rest.split()[0]).exists(), rest
    tools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    sources = {tools["package-dir"].get(p, p).split("/")[0] for p in tools["packages"]}
    copied = {rest.split()[0] for word, rest in steps if word == "COPY"}
    assert sources == {"rnnlm", "models", "training", "app"} and sources <= copied
    # A non-root user from before the demo is built to the end.
    user_at = next(i for i, (w, _) in enumerate(steps) if w == "USER")
    assert steps[user_at][1] not in ("root", "0")
    assert [w for w, _ in steps[user_at:]].count("USER") == 1
    demo = next(i for i, (w, r) in enumerate(steps) if w == "RUN" and "rnnlm demo" in r)
    assert user_at < demo
    # The demo model lands in the directory the CMD serves, through the real CLI's flags.
    demo_args = build_parser().parse_args(shlex.split(steps[demo][1])[1:])
    serve = build_parser().parse_args(image_cmd()[1:])
    assert image_cmd()[0] == "rnnlm" and serve.command == "serve"
    assert (serve.host, serve.port) == ("0.0.0.0", 8000)
    assert demo_args.command == "demo" and demo_args.out == serve.models
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(r for w, r in steps if w == "ENV")))
    assert env["RNNLM_MODELS_DIR"] == serve.models
    check = one("HEALTHCHECK")
    assert "--start-period" in check and check.split("CMD", 1)[1].strip().startswith('["python"')


def test_compose_reads_right() -> None:
    c = compose()
    settings = c["x-rnnlm-settings"]
    assert all(k.startswith("RNNLM_") for k in settings)
    api, train, lb = c["services"]["api"], c["services"]["train"], c["services"]["lb"]
    assert api["environment"] == settings
    assert {k: v for k, v in train["environment"].items() if k in settings} == settings
    # Only the balancer publishes a port, so `--scale api=N` runs N replicas behind it.
    assert [interpolate(p, {}) for p in lb["ports"]] == ["8000:8000"] and "ports" not in api
    assert api["expose"] == ["8000"] and "profiles" not in api and "profiles" not in lb
    assert lb["build"]["context"] == "docker/lb" and lb["depends_on"] == ["api"]
    assert float(settings["RNNLM_WATCH_INTERVAL_S"]) > 0  # trained models show up by themselves
    assert train["profiles"] == ["train"]
    models = settings["RNNLM_MODELS_DIR"]
    assert models == build_parser().parse_args(image_cmd()[1:]).models
    assert "models" in c["volumes"]  # a named volume, shared by both services
    assert f"models:{models}" in api["volumes"] and f"models:{models}" in train["volumes"]
    texts = train["environment"]["TEXTS"]
    assert f"./texts:{texts}:ro" in [interpolate(v, {}) for v in train["volumes"]]
    assert api["healthcheck"]["test"] == ["CMD", *exec_form(one("HEALTHCHECK").split("CMD", 1)[1])]
    assert "/ready" in api["healthcheck"]["test"][-1]  # healthy: its models are loaded
    assert api["build"]["context"] == "." and train["image"] == api["image"]
    args = {k: interpolate(v, {}) for k, v in api["build"]["args"].items()}
    assert args == {"BASE_IMAGE": "python:3.11-slim",
                    "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}  # fmt: skip
    copied_to(train["command"][0])  # the train script is in the image, where compose calls it


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    """A folder of text as a user mounts it: two files, one with a space in its name."""
    root = tmp_path_factory.mktemp("texts")
    lines = text_file.read_text().splitlines()
    (root / "docs.txt").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    (root / "more docs.txt").write_text("\n".join(lines[len(lines) // 2 :]) + "\n")
    (root / "notes.md").write_text("not read: only *.txt files are\n")
    return root


def run_train_service(models: Path, texts: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """The compose `train` service's command, with its environment, on local folders."""
    train = compose()["services"]["train"]
    env = {k: interpolate(str(v), extra) for k, v in train["environment"].items()}
    env.update(RNNLM_MODELS_DIR=str(models), TEXTS=str(texts))
    # `rnnlm` as installed, first on PATH as in the image.
    bindir = models.parent / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "rnnlm"
    shim.write_text(f'#!/bin/sh\nexec {shlex.join(rnnlm_command())} "$@"\n')
    shim.chmod(0o755)
    full_env = {**os.environ, **env, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
                "OMP_NUM_THREADS": "1"}  # fmt: skip
    script = copied_to(train["command"][0])
    return subprocess.run(
        ["sh", str(script), *train["command"][1:]],
        env=full_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


TINY = "--max-steps 6 --eval-every 3 --layers 1 --hidden 16 --embedding 8 --batch-size 8"


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory, texts: Path, models_dir: Path) -> Path:
    """The models volume after the image's build (a served model), an older `docs` model,
    and one run of the `train` service, which replaces it."""
    models = tmp_path_factory.mktemp("volume") / "models"
    models.mkdir()
    shutil.copytree(models_dir / "char", models / "demo")
    shutil.copytree(models_dir / "word", models / "docs")
    r = run_train_service(models, texts, TRAIN_ARGS=TINY + " --cell gru", MODEL_NAME="docs")
    assert r.returncode == 0, r.stderr
    assert "model ready" in r.stderr
    return models


def test_train_service_trains_a_model_into_the_volume(volume: Path) -> None:
    ck = load_checkpoint(volume / "docs")  # replaced whole: a char GRU now, not a word model
    assert ck.config["tokenizer"]["kind"] == "char" and ck.model.config.cell == "gru"
    assert json.loads((volume / ".runs/docs/run/summary.json").read_text())["steps"] == 6
    corpus = json.loads((volume / ".runs/docs/corpus/corpus.json").read_text())
    assert sorted(Path(p).name for p in corpus["inputs"]) == ["docs.txt", "more docs.txt"]
    assert sorted(p.name for p in volume.iterdir()) == [".runs", "demo", "docs"]


def test_train_service_refuses_what_cannot_work(tmp_path: Path, texts: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "empty").mkdir()
    r = run_train_service(tmp_path / "models", tmp_path / "empty")
    assert r.returncode == 2 and "no *.txt file in" in r.stderr
    r = run_train_service(tmp_path / "models", texts, MODEL_NAME="../elsewhere")
    assert r.returncode == 2 and "MODEL_NAME" in r.stderr
    assert list((tmp_path / "models").iterdir()) == []


def test_image_command_serves_and_passes_its_healthcheck(volume: Path, tmp_path: Path) -> None:
    """The image's CMD on the volume after training: both models served, /health green."""
    port = free_port()
    served = build_parser().parse_args(image_cmd()[1:]).models
    argv = [*rnnlm_command(), *[
        {served: str(volume), "0.0.0.0": "127.0.0.1", "8000": str(port)}.get(a, a)
        for a in image_cmd()[1:]
    ]]  # fmt: skip
    check = exec_form(one("HEALTHCHECK").split("CMD", 1)[1])
    assert check[0] == "python"
    check = [sys.executable, *(a.replace(":8000/", f":{port}/") for a in check[1:])]
    env = {k: interpolate(str(v), {}) for k, v in compose()["x-rnnlm-settings"].items()}
    env["RNNLM_MODELS_DIR"] = str(volume)
    with running(argv, port, tmp_path / "server.log", env, wait_for="/health") as live:
        base = live.base
        assert subprocess.run(check, timeout=30).returncode == 0
        ready = httpx.get(base + "/ready", timeout=10).json()
        assert ready["models"] == ["demo", "docs"]
        assert httpx.get(base + "/", timeout=10).headers["content-type"].startswith("text/html")
        r = httpx.post(base + "/sample", json={"model": "docs", "max_tokens": 5}, timeout=30)
        assert r.status_code == 200  # no key: RNNLM_API_KEY is empty unless set
    # And the healthcheck fails when nothing answers.
    assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0
