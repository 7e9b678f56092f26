"""The match model (models/match.py): its index against a brute-force search, its states
read token by token against a whole history, its guess, its mixture, its file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.errors import CheckpointError
from rnnlm.models.match import BUCKETS, MATCH_FILE, MatchModel, sort_by_prefix, training_stream
from tests.conftest import make_checkpoint

V = 5


def _stream(seed: int = 0, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, V, n)
    stream[1000:1100] = stream[2000:2100]  # a long repeat
    return stream


def _model(stream: np.ndarray, max_len: int = 12, mu: float = 0.3) -> MatchModel:
    return MatchModel(stream, np.r_[0.0, np.full(BUCKETS - 1, mu)], max_len)


def _brute(stream: list[int], history: list[int], max_len: int) -> tuple[int, int]:
    """The longest suffix of `history` (at most max_len) found in `stream`, and how many
    times it occurs there."""
    best = count = 0
    for k in range(1, min(len(history), max_len) + 1):
        suffix = history[-k:]
        at = [i for i in range(len(stream) - k + 1) if stream[i : i + k] == suffix]
        if not at:
            break
        best, count = k, len(at)
    return best, count


@pytest.mark.parametrize("max_len", [1, 5, 12])
def test_the_longest_match_and_its_occurrences_are_a_brute_force_searchs(max_len: int) -> None:
    stream = _stream()
    m = _model(stream, max_len)
    rng = np.random.default_rng(1)
    histories = [rng.integers(0, V, rng.integers(1, 30)).tolist() for _ in range(150)]
    histories.append(stream[1000:1040].tolist())  # inside the repeat: the cap binds
    histories.append([])  # nothing read yet
    states = m.after(histories)
    for h, (length, lo, hi) in zip(histories, states.tolist(), strict=True):
        want, count = _brute(stream.tolist(), h, max_len)
        assert length == want
        if want:
            assert hi - lo == count


def test_a_token_the_text_lacks_ends_every_match() -> None:
    m = _model(np.array([0, 1, 2, 0, 1, 2]), mu=0.5)
    state = m.advance(m.after([[0, 1]]), np.array([4]))
    assert state[0, 0] == 0
    token, mu = m.weights(state)
    assert mu[0] == 0


@pytest.mark.parametrize("rows", [1, 3, 40])  # one stream, a few row by row, many at once
def test_advancing_a_token_is_reading_the_whole_history_again(rows: int) -> None:
    stream = _stream(2)
    m = _model(stream, max_len=9)
    rng = np.random.default_rng(3)
    histories = [rng.integers(0, V, rng.integers(0, 25)).tolist() for _ in range(rows)]
    histories[0] = stream[1010:1030].tolist()  # a match at the cap
    states = m.after(histories)
    for _ in range(12):
        tokens = rng.integers(0, V, rows)
        states = m.advance(states, tokens)
        histories = [h + [int(t)] for h, t in zip(histories, tokens, strict=True)]
        np.testing.assert_array_equal(states, m.after(histories))
    # and a scan of every position of a batch gives each position's state
    ids = np.full((2, 25), -1)
    ids[0, :25], ids[1, :10] = stream[1000:1025], stream[5:15]
    scanned = m.scan(ids, np.array([25, 10]))
    for r, n in ((0, 25), (1, 10)):
        for i in range(n):
            np.testing.assert_array_equal(scanned[r, i], m.after([ids[r, : i + 1].tolist()])[0])


def test_the_guess_is_what_followed_most_when_most_is_more_than_half() -> None:
    # "0 1" is followed by 2 four times, by 3 once, by 4 once
    text = [0, 1, 2, 0, 1, 2, 0, 1, 3, 0, 1, 2, 0, 1, 4, 0, 1, 2]
    m = _model(np.array(text), max_len=4)
    states = m.after([[1, 1, 0, 1]])  # "1 0 1" never occurs: the match is "0 1"
    assert states[0, 0] == 2 and states[0, 2] - states[0, 1] == 6
    token, bucket = m.guess(states)
    assert token[0] == 2 and bucket[0] > 0
    token, _ = m.guess(m.after([[3, 0, 1]]))  # "3 0 1" occurs once, followed by 2
    assert token[0] == 2
    token, _ = m.guess(m.after([[1, 4, 0, 1]]))  # "1 4 0 1": once, then 2
    assert token[0] == 2
    token, bucket = m.guess(m.after([[1, 2, 0, 1]]))  # "1 2 0 1": 3, 4, 2 (no majority)
    assert token[0] in (2, 3, 4) and bucket[0] > 0
    token, bucket = m.guess(m.empty(1))
    assert token[0] == -1 and bucket[0] == 0


@pytest.mark.parametrize("rows", [1, 6])
def test_the_mixed_distribution_sums_to_one_and_scores_each_token_alike(rows: int) -> None:
    stream = _stream(4)
    m = _model(stream, max_len=8, mu=0.6)
    rng = np.random.default_rng(5)
    states = m.after([stream[1000 + 7 * r : 1020 + 7 * r].tolist() for r in range(rows)])
    logits = rng.normal(size=(rows, V))
    base = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        mixed = m.mix_(base.astype(dtype), states)
        np.testing.assert_allclose(np.exp(mixed.astype(np.float64)).sum(1), 1.0, atol=tol)
        for t in range(V):
            one = m.token_logprobs(base[:, t], np.full(rows, t), states)
            np.testing.assert_allclose(one, mixed[:, t], atol=10 * tol)
    token, mu = m.weights(states)
    assert (mu > 0).all()
    np.testing.assert_allclose(np.exp(m.mix_(base.copy(), states)[np.arange(rows), token]),
                               (1 - mu) * np.exp(base[np.arange(rows), token]) + mu)  # fmt: skip
    # without a match, nothing changes
    np.testing.assert_allclose(m.mix_(base.copy(), m.empty(rows)), base)


def test_the_prefix_sort_orders_suffixes_as_python_does() -> None:
    text = np.random.default_rng(6).integers(0, 3, 400)
    for depth in (1, 3, 8, 64):
        order = sort_by_prefix(text, depth)
        assert sorted(order.tolist()) == list(range(400))
        keys = [tuple(text[i : i + depth]) for i in order]
        assert keys == sorted(keys)


def test_the_training_stream_is_the_text_as_the_model_read_it() -> None:
    seqs = [[5, 6, 3], [7, 3]]  # each with its <eos> (3)
    assert training_stream(seqs, 2, "sentence").tolist() == [2, 5, 6, 3, 2, 7, 3]
    assert training_stream(seqs, 3, "stream").tolist() == [3, 5, 6, 3, 7, 3]
    assert training_stream([], 2, "sentence").tolist() == []
    empty = _model(np.zeros(0, np.int64))
    assert empty.after([[1, 2]])[0, 0] == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        MatchModel(np.array([1, 2]), np.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MatchModel(np.array([1, 2]), np.full(BUCKETS, 1.0))
    with pytest.raises(ValueError, match="max_len"):
        MatchModel(np.array([1, 2]), np.zeros(BUCKETS), 0)


def _edit(path: Path, **changes: object) -> None:
    config = json.loads((path / "config.json").read_text())
    config["match"].update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_a_checkpoint_keeps_its_match_model_and_refuses_a_bad_one(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m", "char", ngram_order=3, match_mu=0.25)
    ck = load_checkpoint(path)
    assert ck.match is not None and ck.match.max_len == 16
    assert ck.match.mu[0] == 0 and (ck.match.mu[1:] == 0.25).all()
    assert ck.config["match"]["tokens"] == len(ck.match.stream)
    cases = [({"mu": [0.5] * 3}, "buckets"), ({"mu": [1.0] * BUCKETS}, r"\[0, 1\)"),
             ({"max_len": 0}, "max_len"), ({"max_len": "64"}, "max_len"),
             ({"file": "other.safetensors"}, "match.file")]  # fmt: skip
    for change, message in cases:
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        make_checkpoint(bad, "char", ngram_order=3, match_mu=0.25)
        _edit(bad, **change)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(bad)
    changed = make_checkpoint(tmp_path / "changed", "char", ngram_order=3, match_mu=0.25)
    with open(changed / MATCH_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(changed)
    missing = make_checkpoint(tmp_path / "missing", "char", ngram_order=3, match_mu=0.25)
    (missing / MATCH_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(missing)
    outside = make_checkpoint(tmp_path / "outside", "char", ngram_order=3, match_mu=0.25)
    MatchModel(np.array([0, 999]), np.zeros(BUCKETS)).save(outside / MATCH_FILE)
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_checkpoint(outside, verify=False)


def test_a_large_scan_sorts_its_searches_and_finds_the_same_states() -> None:
    # 40 rows of 30: over a thousand searches a step, searched in sorted order
    stream = _stream(7)
    m = _model(stream, max_len=10)
    rng = np.random.default_rng(8)
    ids = rng.integers(0, V, (40, 30))
    ids[:10] = [stream[1000 + r : 1030 + r] for r in range(10)]  # long matches
    scanned = m.scan(ids)
    for r in range(len(ids)):
        state = m.empty(1)
        for i in range(ids.shape[1]):
            state = m.advance(state, ids[r, i : i + 1])  # one row: Python ints, unsorted
            np.testing.assert_array_equal(scanned[r, i], state[0])
