"""A real `rnnlm serve` process on a loopback port, for the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_kib(self) -> int:
        """The server's resident memory (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def rnnlm_command() -> list[str]:
    """The installed `rnnlm` script beside this Python, or the module when not installed."""
    exe = Path(sys.executable).parent / "rnnlm"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "rnnlm.cli"]


class PortTaken(Exception):
    """Another process bound the port between `free_port` and the server's bind."""


@contextmanager
def running(
    argv: Sequence[str], port: int, log_path: Path, env: dict[str, str] | None = None,
    wait_for: str = "/ready",
) -> Iterator[Live]:  # fmt: skip
    """Run `argv` (a server listening on 127.0.0.1:`port`); yield it once `wait_for`
    answers 200; terminate it afterwards."""
    full_env = {**os.environ, "RNNLM_LOG_LEVEL": "warning", **(env or {})}
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            # A guard against a hang, not a measurement: generous for a busy machine.
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    text = log_path.read_text()
                    if "address already in use" in text.lower():
                        raise PortTaken(port)
                    raise AssertionError(text)
                try:
                    if httpx.get(base + wait_for, timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"not ready in 180 s:\n{log_path.read_text()}"
                time.sleep(0.1)
            yield Live(base, proc, log_path)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@contextmanager
def live_server(
    models: Path, env: dict[str, str] | None = None, default_model: str = "char"
) -> Iterator[Live]:
    """Start `rnnlm serve --models MODELS` with `RNNLM_*` overrides; stop it on exit.
    A port taken by someone else in the moment before the bind is retried on another."""
    for attempt in range(5):
        port = free_port()
        argv = [*rnnlm_command(), "serve", "--models", str(models), "--host", "127.0.0.1",
                "--port", str(port), "--default-model", default_model]  # fmt: skip
        try:
            with running(argv, port, models.parent / f"server-{port}.log",
                         {"OMP_NUM_THREADS": "1", **(env or {})}) as live:  # fmt: skip
                yield live
            return
        except PortTaken:
            if attempt == 4:
                raise
