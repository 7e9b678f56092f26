"""The decoding batch: where rows without a prompt start, and the uniforms each row draws."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.models.batch import _UNIFORM_BLOCK, Batch, sample
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.sampling import SampleParams
from tests.conftest import make_checkpoint


@pytest.fixture(params=["char", "word"])
def engine(request: pytest.FixtureRequest, models_dir: Path) -> Engine:
    return Engine(load_checkpoint(models_dir / request.param), max_batch=8)


def _after_start(engine: Engine) -> torch.Tensor:
    """The next-token log-probs after the start token alone, from the fused layer."""
    model = engine.model
    with torch.inference_mode():
        feats, _ = model.features(torch.tensor([[engine.start_id]]))
        return model.log_probs(feats[:, -1])[0]


def test_rows_without_a_prompt_start_from_the_start_token(engine: Engine) -> None:
    assert engine.start is None  # worked out when first needed
    batch = Batch(engine)
    batch.add([engine.generation("", SampleParams(seed=s)) for s in range(3)])
    assert engine.start is not None
    assert batch.next_logprobs is not None and batch.state is not None
    for row in batch.next_logprobs:
        torch.testing.assert_close(row, _after_start(engine), atol=1e-5, rtol=1e-5)
    assert [s.shape[1] for s in batch.state] == [3] * len(batch.state)


def test_the_start_point_is_copied_never_changed(engine: Engine) -> None:
    first = sample(engine, "", SampleParams(max_tokens=30, seed=5))[0]
    assert engine.start is not None
    saved = [t.clone() for t in (*engine.start[0], engine.start[1])]
    # Rows that start from it, step, leave and join again, alone and beside prompts.
    batch = Batch(engine)
    batch.add([engine.generation("", SampleParams(max_tokens=n, seed=n)) for n in range(1, 6)])
    batch.add([engine.generation("the", SampleParams(max_tokens=4, seed=9))])
    for step in range(40):
        batch.step()
        if step < 10:  # a row joins at each of the first steps, beside those leaving
            batch.add([engine.generation("", SampleParams(max_tokens=2, seed=step))])
    assert not len(batch)
    for a, b in zip(saved, (*engine.start[0], engine.start[1]), strict=True):
        assert torch.equal(a, b)
    again = sample(engine, "", SampleParams(max_tokens=30, seed=5))[0]
    assert again.text == first.text and again.logprob == first.logprob


def test_a_model_with_an_ngram_starts_from_the_mixture(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "m", "char", "lstm", ngram_order=3, mix_weight=0.5)
    engine = Engine(load_checkpoint(tmp_path / "m"))
    batch = Batch(engine)
    batch.add([engine.generation("", SampleParams(seed=0))])
    assert batch.next_logprobs is not None and batch.contexts is not None
    # The first token's distribution is the mixture (not the RNN's alone) and sums to 1.
    assert not torch.allclose(batch.next_logprobs[0], _after_start(engine), atol=1e-3)
    assert batch.next_logprobs[0].exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    # Where the start token stands in the n-gram: the context of one token, itself.
    assert batch.contexts.tolist() == [[engine.start_id, -1]]


def test_each_row_draws_its_own_generators_numbers_in_order(engine: Engine) -> None:
    """Rows join and leave at different steps; each still takes the uniforms of its own
    generator one per step, across the block refills, as one draw per step would."""
    batch = Batch(engine)
    gens = [engine.generation("", SampleParams(max_tokens=10**6, seed=s)) for s in range(5)]
    batch.add(gens[:2])
    taken: dict[int, list[float]] = {g.seed: [] for g in gens}
    steps = 3 * _UNIFORM_BLOCK + 5
    for step in range(steps):
        if step == 7:
            batch.add(gens[2:4])
        if step == 2 * _UNIFORM_BLOCK:  # just as every row's block runs out
            batch.add(gens[4:])
        if step == 40:
            batch.remove([1, 2, 3])  # the first row leaves
        if batch._knobs is None:  # what step() does when the members change
            batch._members_changed()
        for g, u in zip(batch.gens, batch._draw(), strict=True):
            taken[g.seed].append(float(u))
    for g in gens:
        want = np.random.Generator(np.random.PCG64(g.seed)).random(len(taken[g.seed]))
        assert taken[g.seed] == want.tolist()
    assert [len(taken[s]) for s in range(5)] == [
        40,
        steps,
        steps - 7,
        steps - 7,
        steps - 2 * _UNIFORM_BLOCK,
    ]
