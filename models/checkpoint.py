"""The checkpoint format: a directory, never a pickle.

    <dir>/config.json         format version, model and tokenizer settings,
                              training metadata and metrics, weights' sha256
    <dir>/model.safetensors   the weights
    <dir>/vocab.json | spm.model   the tokenizer
    <dir>/ngram.safetensors   optional: the n-gram mixed with the RNN (models/ngram.py);
                              config.json's "ngram" holds its order, the mixing
                              weight λ (and optionally one per mixing bucket,
                              "lambda_buckets", and a gate that reads each part's
                              distribution too, "lambda_gate": models/gate.py) and
                              the file's sha256
    <dir>/match.safetensors   optional: the match model over the training text
                              (models/match.py); config.json's "match" holds its
                              max_len, μ per bucket ("mu") and the file's sha256

Writes are atomic: the new directory is written and fsync'd beside the old one
under a temporary name, then renamed into place. Between the two renames a
crash leaves `.<name>.old`; loading and the next save both recover it, so a
good checkpoint is never lost. A crash while writing leaves `.<name>.tmp-*`,
which the next save of that name removes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from rnnlm.models.errors import CheckpointError, TokenizerError
from rnnlm.models.gate import MixingGate
from rnnlm.models.match import MATCH_FILE, MatchModel
from rnnlm.models.model import RNNLM, ModelConfig
from rnnlm.models.ngram import (
    NGRAM_FILE,
    Floats,
    NgramModel,
    check_bucket_weights,
    check_mixing_weight,
)
from rnnlm.models.tokenizers import BOS, EOS, Tokenizer, load_tokenizer, tokenizer_file

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


@dataclass
class Checkpoint:
    path: Path
    model: RNNLM
    tokenizer: Tokenizer
    config: dict[str, Any]
    # The n-gram mixed with the RNN, and λ, the RNN's weight in the mixture: one for
    # every history, or (mix_buckets) one per mixing bucket (models/ngram.py).
    ngram: NgramModel | None = None
    mix_weight: float = 1.0
    mix_buckets: Floats | None = None
    # The match model over the training text, mixed in over all of the above
    # (models/match.py).
    match: MatchModel | None = None
    # λ from each part's distribution as well as the bucket (models/gate.py); None: the
    # table above alone.
    mix_gate: MixingGate | None = None

    def mixing_table(self) -> Floats | None:
        """λ of every mixing bucket (the single λ repeated where there is one), or None."""
        if self.ngram is None:
            return None
        if self.mix_buckets is not None:
            return self.mix_buckets
        return np.full(self.ngram.buckets(), self.mix_weight)

    @property
    def mode(self) -> str:
        """'sentence' (each text from <bos>) or 'stream' (char-rnn style, after <eos>)."""
        return str(self.config.get("training", {}).get("mode", "sentence"))


def start_token(mode: str) -> int:
    """The token every text is read after: <bos>, or <eos> for a stream-mode model."""
    return EOS if mode == "stream" else BOS


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(directory: Path | str) -> str:
    """One sha256 for the whole checkpoint as it is on disk: of config.json, the
    tokenizer's file, and the weights', n-gram's and match model's sha256 (config.json
    records those; a file it records none for is hashed here). Any change to any of them
    changes it."""
    directory = Path(directory)
    config = read_config(directory)
    h = hashlib.sha256((directory / CONFIG).read_bytes())
    h.update(sha256_file(directory / tokenizer_file(config["tokenizer"])).encode())
    if config.get("weights_sha256") is None:
        h.update(sha256_file(directory / WEIGHTS).encode())
    section = config.get("ngram")
    if isinstance(section, dict) and section.get("sha256") is None:
        h.update(sha256_file(directory / NGRAM_FILE).encode())
    section = config.get("match")
    if isinstance(section, dict) and section.get("sha256") is None:
        h.update(sha256_file(directory / MATCH_FILE).encode())
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True) + [root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover(target: Path) -> Path:
    """Put back a checkpoint a crash left under its `.old` name; return `target`.

    With `target` in place too, the crash came after the second rename: the `.old`
    one is superseded and goes.
    """
    old = _old(target)
    if old.is_dir() and not target.exists():
        os.rename(old, target)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh directory; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a crash in the middle of a write left it
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        old = _old(target)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_checkpoint_files(
    directory: Path,
    model: RNNLM,
    tokenizer: Tokenizer,
    ngram: NgramModel | None = None,
    ngram_info: dict[str, Any] | None = None,
    match: MatchModel | None = None,
    match_info: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write weights, tokenizer, the n-gram and the match model if any, and config.json
    into an existing directory. `ngram_info` must hold "lambda"; it becomes config.json's
    "ngram" (`match_info`, what else to record of the match, its "match")."""
    weights = directory / WEIGHTS
    # save_model handles tied (shared) tensors, which plain save_file refuses.
    save_model(model, str(weights), metadata={"format": "pt", "producer": "rnnlm"})
    tokenizer.save(directory)
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": tokenizer.settings(),
        **extra,
        "weights_sha256": sha256_file(weights),
    }
    if ngram is not None:
        info = dict(ngram_info or {})
        check_mixing_weight(info.get("lambda"), "the n-gram's settings")
        if info.get("lambda_buckets") is not None:
            check_bucket_weights(info["lambda_buckets"], ngram.order, "the n-gram's settings")
        if info.get("lambda_gate") is not None:
            if model.config.residual:
                raise CheckpointError("a residual model mixes by its λ table alone, no gate")
            MixingGate.from_dict(info["lambda_gate"], ngram.buckets(), "the n-gram's gate")
        ngram.save(directory / NGRAM_FILE)
        config["ngram"] = {
            **info,
            "file": NGRAM_FILE,
            "order": ngram.order,
            "sha256": sha256_file(directory / NGRAM_FILE),
        }
    if match is not None:
        match.save(directory / MATCH_FILE)
        config["match"] = {
            **(match_info or {}),
            "file": MATCH_FILE,
            "max_len": match.max_len,
            "mu": [float(m) for m in match.mu],
            "tokens": len(match.stream),
            "sha256": sha256_file(directory / MATCH_FILE),
        }
    write_json(directory / CONFIG, config)
    return config


def save_checkpoint(
    directory: Path,
    model: RNNLM,
    tokenizer: Tokenizer,
    ngram: NgramModel | None = None,
    ngram_info: dict[str, Any] | None = None,
    match: MatchModel | None = None,
    match_info: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Atomically write a complete checkpoint to `directory`.

    `extra` becomes top-level keys of config.json (`training`, `metrics`, ...).
    """
    with atomic_directory(Path(directory)) as tmp:
        write_checkpoint_files(tmp, model, tokenizer, ngram, ngram_info, match, match_info,
                               **extra)  # fmt: skip


def _check_hash(path: Path, expected: Any) -> None:
    """Refuse a file whose sha256 is not the one config.json recorded (if it recorded one)."""
    if expected is not None and sha256_file(path) != expected:
        raise CheckpointError(
            f"{path}: sha256 does not match config.json (the file was changed or truncated)"
        )


def _section_file(
    directory: Path, section: dict[str, Any], key: str, name: str, what: str, verify: bool
) -> Path:
    """The file a config.json section names (it must be `name`), there and unchanged."""
    given = section.get("file")
    if given != name:
        raise CheckpointError(f"{directory / CONFIG}: {key}.file must be {name!r}, not {given!r}")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (config.json says the model has {what})")
    if verify:
        _check_hash(path, section.get("sha256"))
    return path


def load_ngram(
    directory: Path, config: dict[str, Any], verify: bool = True
) -> tuple[NgramModel | None, float, Floats | None]:
    """The checkpoint's n-gram, λ and the λ of each mixing bucket (if it has them) from
    config.json's "ngram" section; (None, 1.0, None) without."""
    section = config.get("ngram")
    where = directory / CONFIG
    if section is None:
        return None, 1.0, None
    if not isinstance(section, dict):
        raise CheckpointError(f"{where}: 'ngram' must be an object")
    weight = check_mixing_weight(section.get("lambda"), f"{where}: ngram.lambda")
    path = _section_file(directory, section, "ngram", NGRAM_FILE, "an n-gram", verify)
    ngram = NgramModel.load(path)
    model_vocab = config["model"].get("vocab_size")
    mode = str(config.get("training", {}).get("mode", "sentence"))
    if ngram.vocab_size != model_vocab:
        raise CheckpointError(
            f"{path}: an n-gram over {ngram.vocab_size} tokens, but the model has {model_vocab}"
        )
    if section.get("order") != ngram.order:
        raise CheckpointError(
            f"{path}: order {ngram.order}, but config.json says {section.get('order')!r}"
        )
    if ngram.start_id != start_token(mode):
        raise CheckpointError(
            f"{path}: starts texts after token {ngram.start_id}, but a {mode}-mode model "
            f"reads them after {start_token(mode)}"
        )
    buckets = section.get("lambda_buckets")
    if buckets is not None:
        buckets = check_bucket_weights(buckets, ngram.order, f"{where}: ngram.lambda_buckets")
    return ngram, weight, buckets


def load_match(directory: Path, config: dict[str, Any], verify: bool = True) -> MatchModel | None:
    """The checkpoint's match model from config.json's "match" section; None without."""
    section = config.get("match")
    where = directory / CONFIG
    if section is None:
        return None
    if not isinstance(section, dict):
        raise CheckpointError(f"{where}: 'match' must be an object")
    path = _section_file(directory, section, "match", MATCH_FILE, "a match model", verify)
    vocab = int(config["model"].get("vocab_size", 0))
    return MatchModel.load(path, section.get("mu"), section.get("max_len"), vocab)


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: a checkpoint is a directory, this is a file")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (is {directory} a checkpoint directory?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this rnnlm reads "
            f"{FORMAT_VERSION})"
        )
    for key in ("model", "tokenizer"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"{path}: missing the {key!r} section")
    return config


def load_checkpoint(
    directory: Path | str, device: str | torch.device = "cpu", verify: bool = True
) -> Checkpoint:
    """Load a checkpoint directory; every problem names the file and what is wrong."""
    directory = recover(Path(directory))
    config = read_config(directory)
    model_config = ModelConfig.from_dict(config["model"])
    try:
        tokenizer = load_tokenizer(directory, config["tokenizer"])
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{directory / tokenizer_file(config['tokenizer'])}: {tokenizer.vocab_size} tokens, "
            f"but config.json says the model has {model_config.vocab_size}"
        )
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    if verify:
        _check_hash(weights, config.get("weights_sha256"))
    model = RNNLM(model_config)
    try:
        # safe_open parses only the JSON header: a pickle or a truncated file fails here.
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({e})") from e
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit the config ({e})") from e
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not fit the config (missing: {sorted(missing)}, "
            f"unexpected: {sorted(unexpected)})"
        )
    model.to(device).eval()
    ngram, weight, buckets = load_ngram(directory, config, verify)
    if model_config.residual and ngram is None:
        raise CheckpointError(
            f"{directory / CONFIG}: a residual model (its logits correct an n-gram's) but "
            f"no n-gram: {NGRAM_FILE} and config.json's 'ngram' belong with it"
        )
    gate = None
    if ngram is not None and config["ngram"].get("lambda_gate") is not None:
        where = f"{directory / CONFIG}: ngram.lambda_gate"
        if model_config.residual:  # its mixture reads the n-gram twice (models/engine.py)
            raise CheckpointError(f"{where}: a residual model mixes by its table alone")
        gate = MixingGate.from_dict(config["ngram"]["lambda_gate"], ngram.buckets(), where)
    match = load_match(directory, config, verify)
    return Checkpoint(directory, model, tokenizer, config, ngram, weight, buckets, match, gate)
