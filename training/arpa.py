"""ARPA files out and in, so that KenLM (or SRILM) and rnnlm share n-gram models.

An ARPA file lists, per order, each n-gram's log10 probability, its words and
(below the highest order) its log10 backoff weight:

    \\data\\
    ngram 1=7
    ngram 2=14

    \\1-grams:
    -0.60206    a    -0.30103
    …
    \\end\\

Words are the model's tokens: `<s>`, `</s>` and `<unk>` for its start, end and
unknown tokens, and every other token as its text with each whitespace
character written `<U+XXXX>` (a character model's space is `<U+0020>`), since
ARPA separates words by whitespace. `<pad>` is never written.

Export writes the n-gram inside a model exactly: KenLM loading the file gives
the same probabilities. Import maps an ARPA file's words onto a model's
vocabulary: n-grams with words the model lacks are dropped; model tokens the
file lacks score as its `<unk>` (as KenLM scores an unknown word); where
n-grams are missing that a backoff model needs (a pruned file leaves holes:
the context or the suffix of a stored n-gram), they are filled with their
backed-off probability, as KenLM does; and each context's distribution is then
renormalised over the model's vocabulary, so it sums to 1 again (for a file
estimated on the same tokens, that changes nothing measurable).
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from rnnlm.models.errors import CheckpointError, RnnlmError
from rnnlm.models.ngram import NgramModel
from rnnlm.models.tokenizers import BOS, EOS, PAD, UNK, Tokenizer

LN10 = math.log(10.0)
MAX_ORDER = 64
MAX_LINE = 1 << 20  # bytes: longer lines are not ARPA
SPECIAL_WORDS = {BOS: "<s>", EOS: "</s>", UNK: "<unk>"}
_ESCAPE_RE = re.compile(r"\s|<(?=U\+[0-9A-F]{4}>)")
UNKNOWN_WORD = -2  # an ARPA word the model lacks
MISSING_UNK_LOG10 = -100.0  # KenLM's choice when a file has no <unk>

Int64s = np.ndarray[Any, np.dtype[np.int64]]
Floats = np.ndarray[Any, np.dtype[np.float64]]


class ArpaError(RnnlmError):
    """An ARPA file that cannot be read: the message names the line and the problem."""


def arpa_word(piece: str) -> str:
    """A token's text as one ARPA word (whitespace written <U+XXXX>)."""
    if piece in SPECIAL_WORDS.values() or not piece:
        return "<U+003C>" + piece[1:] if piece else "<U+>"
    return _ESCAPE_RE.sub(lambda m: f"<U+{ord(m.group()):04X}>", piece)


def token_words(tokenizer: Tokenizer) -> list[str | None]:
    """The ARPA word of every token id (None for <pad>, which is never written)."""
    words: list[str | None] = []
    for i in range(tokenizer.vocab_size):
        if i == PAD:
            words.append(None)
        elif i in SPECIAL_WORDS:
            words.append(SPECIAL_WORDS[i])
        else:
            words.append(arpa_word(tokenizer.piece(i)))
    return words


# ---------------------------------------------------------------- export


def write_arpa(model: NgramModel, words: list[str | None], out: Path) -> dict[str, Any]:
    """Write `model` as an ARPA file (gzip when `out` ends in .gz); returns the counts."""
    if model.start_id != BOS:
        raise RnnlmError(
            "this model's n-gram starts each text after </s> (a stream-mode model); "
            "ARPA's <s> cannot stand for that, so it has no ARPA form"
        )
    if len(words) != model.vocab_size:
        raise RnnlmError(f"{len(words)} words for a vocabulary of {model.vocab_size}")
    written = [i for i in range(model.vocab_size) if words[i] is not None]
    counts = [len(written)] + [model.size(k) for k in range(2, model.order + 1)]
    opener: Callable[..., IO[str]] = gzip.open if out.suffix == ".gz" else open
    tmp = out.with_name(f".{out.name}.tmp")
    vocab = np.array([w if w is not None else "" for w in words], dtype=object)
    with opener(tmp, "wt", encoding="utf-8", newline="\n") as f:
        f.write("\\data\\\n")
        for k, n in enumerate(counts, start=1):
            f.write(f"ngram {k}={n}\n")
        for k in range(1, model.order + 1):
            f.write(f"\n\\{k}-grams:\n")
            lp = model.logprob[k - 1].astype(np.float64) / LN10
            bo = model.backoff[k - 1].astype(np.float64) / LN10 if k < model.order else None
            if k == 1:
                lp = lp.copy()
                lp[BOS] = -99.0  # never predicted: lmplz's convention for <s>
                keep = np.array(written)
                text = vocab[keep]
                lp, bo = lp[keep], None if bo is None else bo[keep]
            else:
                rows = model.rows(k)
                text = vocab[rows[:, 0]]
                for j in range(1, k):
                    text = text + " " + vocab[rows[:, j]]
            for i in range(len(text)):
                line = f"{lp[i]:.7g}\t{text[i]}"
                f.write(line + (f"\t{bo[i]:.7g}\n" if bo is not None else "\n"))
        f.write("\n\\end\\\n")
    tmp.replace(out)
    return {"orders": model.order, "counts": counts, "path": str(out)}


# ---------------------------------------------------------------- reading


@dataclass
class ArpaOrder:
    ids: Int64s  # (n, k): the words' token ids, UNKNOWN_WORD for words the model lacks
    log10prob: Floats
    log10backoff: Floats


@dataclass
class ArpaFile:
    path: Path
    order: int
    counts: list[int]
    orders: list[ArpaOrder] = field(default_factory=list)
    unknown_words: set[str] = field(default_factory=set)
    unk_log10prob: float | None = None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline), refusing binary, non-UTF-8 and huge lines."""
    opener: Callable[..., IO[bytes]] = gzip.open if path.suffix == ".gz" else open  # type: ignore[assignment]
    try:
        with opener(path, "rb") as f:
            for number in range(1, 1 << 62):
                raw = f.readline(MAX_LINE + 1)
                if not raw:
                    return
                if len(raw) > MAX_LINE:
                    raise ArpaError(f"{path}:{number}: a line longer than {MAX_LINE} bytes")
                if b"\x00" in raw:
                    raise ArpaError(f"{path}:{number}: binary data (a NUL byte)")
                try:
                    yield number, raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise ArpaError(f"{path}:{number}: not UTF-8 ({e.reason})") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise ArpaError(f"{path}: no such file") from None
        raise ArpaError(f"{path}: cannot be read ({e})") from None


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ArpaError(f"{where}: {what} {text!r} is not a number") from None
    if math.isnan(value) or value == math.inf:
        raise ArpaError(f"{where}: {what} {text!r} is not a log10 value")
    return value


def read_arpa(path: Path, word_id: Callable[[str], int]) -> ArpaFile:
    """Parse an ARPA file, mapping each word with `word_id` (UNKNOWN_WORD if the
    model lacks it). Every problem is an ArpaError naming the line."""
    lines = _lines(path)
    for _, line in lines:  # anything before \data\ is a comment
        if line.strip() == "\\data\\":
            break
    else:
        raise ArpaError(f"{path}: no \\data\\ header: not an ARPA file")
    counts: list[int] = []
    for number, line in lines:
        if not line.strip():
            if counts:
                break
            continue
        m = re.fullmatch(r"\s*ngram\s+(\d+)\s*=\s*(\d+)\s*", line)
        if not m:
            raise ArpaError(f"{path}:{number}: expected 'ngram N=count', got {line[:80]!r}")
        k, n = int(m.group(1)), int(m.group(2))
        if k != len(counts) + 1:
            raise ArpaError(f"{path}:{number}: expected the count of order {len(counts) + 1}")
        if k > MAX_ORDER:
            raise ArpaError(f"{path}:{number}: order {k} is above the {MAX_ORDER} accepted")
        counts.append(n)
    if not counts:
        raise ArpaError(f"{path}: the \\data\\ section lists no n-gram counts")
    arpa = ArpaFile(path, len(counts), counts)
    seen: dict[str, int] = {}

    def mapped(word: str) -> int:
        got = seen.get(word)
        if got is None:
            got = seen[word] = word_id(word)
            if got == UNKNOWN_WORD:
                arpa.unknown_words.add(word)
        return got

    pending: tuple[int, str] | None = (
        None  # a section's header read as the last line of the one before
    )

    def next_nonblank() -> tuple[int, str] | None:
        nonlocal pending
        if pending is not None:
            got, pending = pending, None
            return got
        for number_line in lines:
            if number_line[1].strip():
                return number_line
        return None

    for k in range(1, arpa.order + 1):
        header = f"\\{k}-grams:"
        got = next_nonblank()
        if got is None:
            raise ArpaError(f"{path}: truncated: the {header} section is missing")
        number, line = got
        if line.strip() != header:
            raise ArpaError(f"{path}:{number}: expected {header!r}, got {line.strip()[:80]!r}")
        ids: list[int] = []
        probs: list[float] = []
        backoffs: list[float] = []
        ended = True
        for number, line in lines:
            fields = line.split()
            if not fields:
                ended = False
                break
            if fields[0].startswith("\\"):  # the next section, with no blank line before it
                pending = (number, line)
                ended = False
                break
            where = f"{path}:{number}"
            if len(fields) not in (k + 1, k + 2) or (k == arpa.order and len(fields) != k + 1):
                raise ArpaError(
                    f"{where}: expected a log10 probability, {k} word(s)"
                    f"{' and an optional backoff' if k < arpa.order else ''}, got {line[:80]!r}"
                )
            p = _number(fields[0], where, "probability")
            if p > 1e-6:
                raise ArpaError(f"{where}: positive log10 probability {fields[0]}")
            probs.append(max(p, -99.0) if p > -math.inf else -99.0)
            backoffs.append(
                _number(fields[k + 1], where, "backoff") if len(fields) > k + 1 else 0.0
            )
            ids.extend(mapped(w) for w in fields[1 : k + 1])
            if k == 1 and fields[1] == "<unk>":
                arpa.unk_log10prob = p
        if ended and len(probs) < counts[k - 1]:
            raise ArpaError(
                f"{path}: truncated: the file ends inside {header} after {len(probs)} of "
                f"{counts[k - 1]} entries"
            )
        if len(probs) != counts[k - 1]:
            raise ArpaError(
                f"{path}: {header} has {len(probs)} entries, the header says {counts[k - 1]}"
            )
        arpa.orders.append(
            ArpaOrder(
                np.array(ids, dtype=np.int64).reshape(-1, k),
                np.array(probs, dtype=np.float64),
                np.array(backoffs, dtype=np.float64),
            )
        )
    got = next_nonblank()
    if got is None:
        raise ArpaError(f"{path}: truncated: no \\end\\ after the {arpa.order}-grams")
    if got[1].strip() != "\\end\\":
        raise ArpaError(f"{path}:{got[0]}: expected \\end\\, got {got[1].strip()[:80]!r}")
    return arpa


# ---------------------------------------------------------------- import


def _unique_rows(rows: Int64s) -> tuple[Int64s, Int64s]:
    """Distinct rows, and for each the index of its first occurrence."""
    if not len(rows):
        return rows, np.zeros(0, np.int64)
    uniq, first = np.unique(rows, axis=0, return_index=True)
    return uniq, first


def import_arpa(
    path: Path, tokenizer: Tokenizer, start_id: int = BOS
) -> tuple[NgramModel, dict[str, Any]]:
    """An ARPA file as the n-gram of a model with this tokenizer; and what was mapped."""
    if start_id != BOS:
        raise RnnlmError(
            "this model starts each text after </s> (stream mode); an ARPA file's <s> "
            "cannot stand for that: import it into a sentence-mode model"
        )
    V = tokenizer.vocab_size
    index = {w: i for i, w in enumerate(token_words(tokenizer)) if w is not None}
    arpa = read_arpa(path, lambda w: index.get(w, UNKNOWN_WORD))
    N = arpa.order
    report: dict[str, Any] = {
        "source": str(path),
        "order": N,
        "file_counts": arpa.counts,
        "unknown_words": len(arpa.unknown_words),
        "unknown_word_examples": sorted(arpa.unknown_words)[:10],
    }
    # Per order: the n-grams whose words the model has; log10 values.
    rows, lp, bo = [], [], []
    for o in arpa.orders:
        keep = (o.ids >= 0).all(axis=1)
        rows.append(o.ids[keep])
        lp.append(o.log10prob[keep])
        bo.append(o.log10backoff[keep])
    report["dropped_ngrams"] = [
        int(len(o.ids) - len(r)) for o, r in zip(arpa.orders, rows, strict=True)
    ]
    if (rows[0][:, 0] == BOS).sum() == 0:
        raise RnnlmError(f"{path}: no <s> among the unigrams: not a sentence-level model")
    # Order 1 covers the vocabulary: tokens the file lacks score as its <unk>.
    unk = arpa.unk_log10prob if arpa.unk_log10prob is not None else MISSING_UNK_LOG10
    lp1 = np.full(V, unk, dtype=np.float64)
    bo1 = np.zeros(V, dtype=np.float64)
    lp1[rows[0][:, 0]] = lp[0]
    bo1[rows[0][:, 0]] = bo[0]
    missing = np.ones(V, bool)
    missing[rows[0][:, 0]] = False
    missing[[PAD, BOS]] = False
    report["tokens_scored_as_unk"] = int(missing.sum())
    lp1[[PAD, BOS]] = -np.inf
    # Fill the holes a backoff model cannot have: every n-gram's context and
    # suffix must be stored. Top down, new ones marked with a NaN probability.
    filled = [0] * N
    for k in range(N, 2, -1):
        need = np.concatenate([rows[k - 1][:, :-1], rows[k - 1][:, 1:]])
        have = len(rows[k - 2])
        uniq, first = _unique_rows(np.concatenate([rows[k - 2], need]))
        new = uniq[first >= have]
        if len(new):
            filled[k - 2] = len(new)
            rows[k - 2] = np.concatenate([rows[k - 2], new])
            lp[k - 2] = np.concatenate([lp[k - 2], np.full(len(new), np.nan)])
            bo[k - 2] = np.concatenate([bo[k - 2], np.zeros(len(new))])
    report["filled_ngrams"] = filled
    # Build the trie bottom up; a filled n-gram gets its backed-off probability,
    # b(w1 … wk-1)·P(wk | w2 … wk-1), from the orders below it.
    keys: list[Int64s] = [np.zeros(0, np.int64)]
    logprob: list[Floats] = [lp1 * LN10]
    backoff: list[Floats] = [bo1 * LN10]
    for k in range(2, N + 1):
        r = rows[k - 1]
        try:
            below = NgramModel(k - 1, V, BOS, keys, _f32(logprob), _f32(backoff[: k - 2]))
        except CheckpointError as e:
            raise ArpaError(f"{path}: {e}") from None
        key = _index_of(below, r[:, 1:]) * V + r[:, 0]
        order = np.argsort(key, kind="stable")
        key, r, lpk, bok = key[order], r[order], lp[k - 1][order], bo[k - 1][order]
        if len(key) > 1 and np.any(key[1:] == key[:-1]):
            dup = r[np.flatnonzero(key[1:] == key[:-1])[0]]
            raise ArpaError(f"{path}: the {k}-gram {_show(dup, tokenizer)} is listed twice")
        lpk = lpk * LN10
        holes = np.isnan(lpk)
        if holes.any():
            shorter = below.logprob_of(r[holes, 1:-1], r[holes, -1])
            lpk[holes] = shorter + backoff[k - 2][_index_of(below, r[holes, :-1])]
        keys.append(key)
        logprob.append(lpk)
        if k < N:
            backoff.append(bok * LN10)
    try:
        raw = NgramModel(N, V, BOS, keys, _f32(logprob), _f32(backoff))
    except CheckpointError as e:
        raise ArpaError(f"{path}: {e}") from None
    model, log10_z = renormalise(raw)
    report["max_abs_log10_renormalisation"] = log10_z
    report["counts"] = model.counts()
    return model, report


def _index_of(model: NgramModel, rows: Int64s) -> Int64s:
    """The index of each row's n-gram at order rows.shape[1] (all must be stored)."""
    idx = rows[:, -1].copy()
    for j in range(2, rows.shape[1] + 1):
        pos, found = model.find(j, idx * model.vocab_size + rows[:, -j])
        if not found.all():  # the closure above makes this impossible
            raise RnnlmError(f"order {j}: a stored n-gram's context or suffix is missing")
        idx = pos
    return idx


def _f32(arrays: list[Any]) -> list[Any]:
    return [np.asarray(a, dtype=np.float32) for a in arrays]


def _show(row: Int64s, tokenizer: Tokenizer) -> str:
    words = token_words(tokenizer)
    return " ".join(str(words[int(i)]) for i in row)


def renormalise(model: NgramModel) -> tuple[NgramModel, float]:
    """The same backoff model with every context's distribution rescaled to sum to 1
    over the vocabulary; and the largest |log10| of the factors it took.

    Z(h) = Σ_{w seen after h} P(h w) + b(h)·(Z(h') − Σ_{w seen after h} P(h' w)),
    h' being h without its oldest token; then P'(h w) = P(h w)/Z(h) and
    b'(h) = b(h)·Z(h')/Z(h).
    """
    N = model.order
    p = [np.exp(lp.astype(np.float64)) for lp in model.logprob]  # 0 where never predicted
    b = [np.exp(x.astype(np.float64)) for x in model.backoff]
    z_prev = np.array([p[0].sum()])  # the empty context's mass
    with np.errstate(divide="ignore"):
        new_lp = [np.log(p[0] / z_prev[0])]
    worst = abs(math.log10(z_prev[0]))
    parent_prev = np.zeros(model.vocab_size, np.int64)  # order 1's parent: the empty context
    new_bo = []
    for j in range(1, N):
        keys = model.keys[j]  # order j+1
        ctx = model.context_index(j + 1)
        parent = keys // model.vocab_size  # (w2 … wj+1) at order j
        n_ctx = model.size(j)
        s1 = np.bincount(ctx, weights=p[j], minlength=n_ctx)
        s2 = np.bincount(ctx, weights=p[j - 1][parent], minlength=n_ctx)
        z = s1 + b[j - 1] * (z_prev[parent_prev] - s2)
        z = np.where(z > 0, z, 1.0)
        worst = max(worst, float(np.abs(np.log10(z)).max()) if len(z) else 0.0)
        new_bo.append(np.log(b[j - 1] * z_prev[parent_prev] / z))
        new_lp.append(np.log(p[j] / z[ctx]))
        z_prev, parent_prev = z, parent
    out = NgramModel(
        N,
        model.vocab_size,
        model.start_id,
        model.keys,
        _f32(new_lp),
        _f32(new_bo),
    )
    return out, worst
