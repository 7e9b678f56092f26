"""Beam-search states (models/states.py): the engine's numbers, computed once per history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.states import LMState, StateTable
from tests.conftest import make_checkpoint

TEXTS = ["the cat sat on the mat.", "a bird sang in the tree", "hello world!"]


@pytest.fixture(scope="module", params=["char", "word", "char-match", "word-match"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root = tmp_path_factory.mktemp("states")
    kind = request.param.split("-")[0]
    path = make_checkpoint(root / request.param, kind, "lstm", ngram_order=3, bucket_weights=True,
                           match_mu=0.4 if "match" in request.param else 0.0)  # fmt: skip
    return Engine(load_checkpoint(path))


def _walk(table: StateTable, ids: list[int]) -> list[float]:
    """Each token's log-prob read off the states along the text, then <eos>'s."""
    state, out = table.start(), []
    for t in [*ids, 3]:
        out.append(float(table.next_logprobs([state])[0, t]))
        state = state.child(t)
    return out


def test_a_text_read_through_states_scores_as_the_engine_does(engine: Engine) -> None:
    table = StateTable(engine)
    for text in TEXTS:
        ids = engine.tokenizer.encode(text)
        ((_, expected, _),) = engine.score_token_ids([ids])
        np.testing.assert_allclose(_walk(table, ids), expected, atol=2e-5)


def test_every_distribution_sums_to_one(engine: Engine) -> None:
    table = StateTable(engine)
    ids = engine.tokenizer.encode(TEXTS[0])
    states = [LMState(tuple(ids[:k])) for k in range(len(ids) + 1)]
    lp = table.next_logprobs(states)  # (B, V)
    assert lp.shape == (len(states), engine.tokenizer.vocab_size)
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)


def test_children_of_a_shared_parent_are_computed_once_in_one_step(engine: Engine) -> None:
    table = StateTable(engine)
    root = table.start()
    table.next_logprobs([root])
    assert table.computed == 1
    kids = table.advance([root] * 4, [5, 6, 7, 5])  # two of them the same history
    assert kids[0] == kids[3] and hash(kids[0]) == hash(kids[3]) and kids[0] != kids[1]
    assert table.computed == 1  # advancing is bookkeeping only
    lp = table.next_logprobs(kids)
    assert table.computed == 4  # three new histories, the parent not again
    np.testing.assert_array_equal(lp[0], lp[3])
    again = table.next_logprobs(kids[::-1])
    assert table.computed == 4
    np.testing.assert_array_equal(again[::-1], lp)
    # A deep state whose ancestors were never asked for: they are computed on the way.
    deep = LMState((5, 6, 7, 8))
    table.next_logprobs([deep])
    assert table.computed == 4 + 3  # (5, 6), (5, 6, 7), (5, 6, 7, 8)


def test_a_small_budget_drops_states_and_recomputes_them_the_same(engine: Engine) -> None:
    ids = engine.tokenizer.encode(TEXTS[1])
    big, small = StateTable(engine), StateTable(engine, max_bytes=1)
    np.testing.assert_allclose(_walk(small, ids), _walk(big, ids), atol=1e-6)
    assert len(small) == 1 and len(big) == len(ids) + 1


def test_a_null_context_starts_the_ngram_without_a_history(engine: Engine) -> None:
    table = StateTable(engine)
    start, null = table.next_logprobs([table.start(True), table.start(False)])
    assert table.start(False) != table.start(True)
    assert not np.allclose(start, null)  # the n-gram's part differs: unigrams, not <s>
    np.testing.assert_allclose(np.exp(null.astype(np.float64)).sum(), 1.0, atol=1e-5)


def test_without_an_ngram_the_states_are_the_rnn_alone(tmp_path: Path) -> None:
    engine = Engine(load_checkpoint(make_checkpoint(tmp_path / "m", "word", "gru")))
    table = StateTable(engine)
    ids = engine.tokenizer.encode(TEXTS[0])
    ((_, expected, _),) = engine.score_token_ids([ids])
    np.testing.assert_allclose(_walk(table, ids), expected, atol=2e-5)
    start, null = table.next_logprobs([table.start(True), table.start(False)])
    np.testing.assert_array_equal(start, null)


def test_bad_tokens_are_refused(engine: Engine) -> None:
    table = StateTable(engine)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        table.advance([table.start()], [engine.tokenizer.vocab_size])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        table.advance([table.start()], [-1])
    with pytest.raises(ValueError, match="2 states but 1 tokens"):
        table.advance([table.start()] * 2, [5])
    assert table.next_logprobs([]).shape == (0, engine.tokenizer.vocab_size)
