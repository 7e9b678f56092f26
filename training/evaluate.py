"""`rnnlm eval`: perplexity of a model on a text file, one sequence per line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from models.checkpoint import load_checkpoint
from models.engine import Engine
from models.errors import RnnlmError


def evaluate_file(model_dir: Path, path: Path, device: str = "cpu") -> dict[str, Any]:
    """Score every non-empty line as `<bos> ... <eos>`, the way the corpus builder splits."""
    if not path.is_file():
        raise RnnlmError(f"{path}: no such file")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise RnnlmError(f"{path}: not UTF-8 ({e.reason})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise RnnlmError(f"{path}: no text to evaluate")
    engine = Engine(load_checkpoint(model_dir, device=device))
    nll = 0.0
    tokens = unk = chars = 0
    for start in range(0, len(lines), 1024):
        for r in engine.score_batch(lines[start : start + 1024]):
            nll -= r.logprob
            tokens += r.num_tokens
            unk += r.oov_count
            chars += len(r.text) + 1  # the end of the line counts as a character
    return {
        "model": str(model_dir),
        "input": str(path),
        "sequences": len(lines),
        "tokens": tokens,  # <eos> included
        "characters": chars,  # newline included
        "unk_count": unk,
        "logprob": -nll,
        "perplexity": math.exp(nll / tokens),
        "bits_per_token": nll / tokens / math.log(2),
        "bits_per_character": nll / chars / math.log(2),
    }


def eval_command(args: argparse.Namespace) -> None:
    print(json.dumps(evaluate_file(Path(args.model), Path(args.input), args.device), indent=2))
