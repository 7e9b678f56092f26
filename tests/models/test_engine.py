import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlm.models.batch import Batch, sample
from rnnlm.models.checkpoint import load_checkpoint
from rnnlm.models.engine import Engine
from rnnlm.models.sampling import SampleParams
from rnnlm.models.tokenizers import BOS, EOS
from tests.conftest import make_checkpoint

TEXTS = ["the cat sat on the mat.", "", "a", "hello world! it's a fine day.", "zzz qqq", "x" * 300]


@pytest.fixture(scope="module", params=["char", "word", "gru-simple", "lstm-peephole"])
def engine(request: pytest.FixtureRequest, models_dir: Path) -> Engine:
    return Engine(load_checkpoint(models_dir / request.param), max_batch=4)


def test_scores_do_not_depend_on_the_batch(engine: Engine):
    alone = [engine.score_batch([t])[0] for t in TEXTS]
    together = engine.score_batch(TEXTS)
    reversed_ = engine.score_batch(TEXTS[::-1])[::-1]
    for a, b, c in zip(alone, together, reversed_, strict=True):
        assert b.logprob == pytest.approx(a.logprob, rel=1e-5, abs=1e-4)
        assert c.logprob == pytest.approx(a.logprob, rel=1e-5, abs=1e-4)
        assert a.num_tokens == b.num_tokens


def test_score_fields_follow_the_design(engine: Engine):
    r = engine.score_batch(["the cat"], per_token=True)[0]
    n = len(engine.tokenizer.encode("the cat"))
    assert r.num_tokens == n + 1  # <eos> counted
    assert r.tokens is not None and r.tokens[-1].token == "<eos>"
    assert sum(t.logprob for t in r.tokens) == pytest.approx(r.logprob, abs=1e-4)
    assert r.log10prob == pytest.approx(r.logprob / math.log(10))
    assert r.perplexity == pytest.approx(math.exp(-r.logprob / r.num_tokens))
    no_eos = engine.score_batch(["the cat"], eos=False)[0]
    assert no_eos.num_tokens == n
    no_bos = engine.score_batch(["the cat"], bos=False, eos=False)[0]
    assert no_bos.num_tokens == n - 1  # the first token is context, not scored
    empty = engine.score_batch([""], eos=False)[0]
    assert empty.num_tokens == 0 and empty.logprob == 0 and empty.perplexity is None


@pytest.mark.parametrize("text", ["", "a", "the cat"])
@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("eos", [True, False])
def test_per_token_results_line_up_for_every_bos_and_eos(
    engine: Engine, text: str, bos: bool, eos: bool
):
    # Found by fuzzing the API: "" with bos false and eos true crashed per_token scoring.
    r = engine.score_batch([text], bos=bos, eos=eos, per_token=True, top=2)[0]
    pieces = engine.tokenizer.tokenize(text)[1]
    names = (pieces + (["<eos>"] if eos else []))[0 if bos else 1 :]
    assert r.tokens is not None and [t.token for t in r.tokens] == names
    assert r.num_tokens == len(names) and all(len(t.top or []) == 2 for t in r.tokens)
    plain = engine.score_batch([text], bos=bos, eos=eos)[0]
    assert plain.num_tokens == r.num_tokens
    assert plain.logprob == pytest.approx(r.logprob, abs=1e-5)


def test_a_long_text_is_not_padded_beside_short_ones(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    texts = ["the cat sat on the mat " * 12] + ["a b", "the", "cat sat"] * 5
    want = engine.score_batch(texts, per_token=True)
    shapes: list[tuple[int, ...]] = []
    real = engine.model.features

    def spy(inp, state=None, **kw):  # type: ignore[no-untyped-def]
        shapes.append(tuple(inp.shape))
        return real(inp, state, **kw)

    monkeypatch.setattr(engine.model, "features", spy)
    monkeypatch.setattr("rnnlm.models.scoring._PADDED_IDS", 64)
    got = engine.score_batch(texts, per_token=True)
    long_rows = {rows for rows, steps in shapes if steps > 16}
    assert long_rows == {1}, shapes  # the long text alone, then the short ones together
    assert max(rows for rows, _ in shapes) > 1
    for a, b in zip(want, got, strict=True):
        assert a.num_tokens == b.num_tokens
        assert a.logprob == pytest.approx(b.logprob, rel=1e-5, abs=1e-4)


def test_score_matches_the_model_directly(engine: Engine):
    text = "the cat sat"
    ids = [BOS] + engine.tokenizer.encode(text) + [EOS]
    with torch.no_grad():
        lp, _ = engine.model(torch.tensor([ids[:-1]]))
    expected = sum(lp[0, i, ids[i + 1]].item() for i in range(len(ids) - 1))
    assert engine.score_batch([text])[0].logprob == pytest.approx(expected, abs=1e-4)


def test_windows_through_the_host_run_score_as_the_fused_layer(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    """Scoring's windows through `HostStep.run` (every window of them here, however few
    its rows, and for these small embeddings too) give the fused layer's scores."""
    texts = [*TEXTS, "the mat sat on the cat. " * 4, "b"]
    want = engine.score_batch(texts, per_token=True, top=2)
    if engine.host_step is None:  # the reference cells have no host step
        return
    calls: list[tuple[int, ...]] = []
    real = engine.host_step.run

    def spy(ids, state):  # type: ignore[no-untyped-def]
        calls.append(ids.shape)
        return real(ids, state)

    monkeypatch.setattr(type(engine.host_step), "scores", property(lambda s: True))
    monkeypatch.setattr("rnnlm.models.engine._HOST_SCORE_MIN_ROWS", 1)
    monkeypatch.setattr(engine.host_step, "run", spy)
    got = engine.score_batch(texts, per_token=True, top=2)
    assert calls and max(rows for rows, _ in calls) > 1
    for a, b in zip(want, got, strict=True):
        assert a.num_tokens == b.num_tokens
        assert a.logprob == pytest.approx(b.logprob, rel=1e-5, abs=1e-4)
        assert a.tokens is not None and b.tokens is not None
        for x, y in zip(a.tokens, b.tokens, strict=True):
            assert x.id == y.id and x.logprob == pytest.approx(y.logprob, abs=1e-4)
            assert x.top is not None and y.top is not None
            assert [i for i, _ in x.top] == [i for i, _ in y.top]
    alone = [engine.score_batch([t])[0] for t in texts]  # and a text's score is its own
    for a, b in zip(alone, got, strict=True):
        assert a.logprob == pytest.approx(b.logprob, rel=1e-5, abs=1e-4)


def test_unknown_tokens_are_scored_and_counted(engine: Engine):
    r = engine.score_batch(["the ☃ cat 象"])[0]
    assert r.oov_count >= 2
    assert math.isfinite(r.logprob)


def test_top_alternatives(engine: Engine):
    r = engine.score_batch(["the cat"], top=3)[0]
    assert r.tokens is not None
    for t in r.tokens:
        assert t.top is not None and len(t.top) == 3
        assert t.top[0][1] >= t.logprob - 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_sample_logprob_equals_the_score_of_its_text(engine: Engine, temperature: float):
    params = SampleParams(max_tokens=30, temperature=temperature, seed=7)
    for s in sample(engine, "", params, n=6):
        r = engine.score_batch([s.text], eos=s.finish_reason == "eos")[0]
        assert s.logprob == pytest.approx(r.logprob, abs=1e-3)
        assert s.num_tokens == r.num_tokens


def test_same_seed_same_samples_alone_or_in_a_batch(engine: Engine):
    params = SampleParams(max_tokens=25, seed=11, top_k=5, top_p=0.9)
    together = sample(engine, "the", params, n=5)  # seeds 11..15, batched
    for i, s in enumerate(together):
        alone = sample(engine, "the", SampleParams(max_tokens=25, seed=11 + i, top_k=5, top_p=0.9))
        assert alone[0].text == s.text
        assert alone[0].logprob == pytest.approx(s.logprob, abs=1e-4)
    other = sample(engine, "the", SampleParams(max_tokens=25, seed=99, top_k=5, top_p=0.9))
    assert [s.seed for s in together] == [11, 12, 13, 14, 15]
    assert other[0].seed == 99


@pytest.mark.parametrize("name", ["char", "word"])
def test_the_torch_decoding_path_samples_what_the_host_path_does(name: str, models_dir: Path):
    # The CPU decodes with numpy between the products (models/host_step.py); a GPU with
    # torch's ops throughout. The same seeds, the same samples, to rounding.
    host = Engine(load_checkpoint(models_dir / name), max_batch=4)
    torch_ops = Engine(load_checkpoint(models_dir / name), max_batch=4, host=False)
    assert host.host_step is not None and torch_ops.host_step is None
    assert host.host_sampling and not torch_ops.host_sampling  # small vocabularies, both
    plain = SampleParams(max_tokens=40, seed=5)
    knobs = SampleParams(max_tokens=40, seed=9, temperature=0.8, top_k=6, top_p=0.9)
    for params in (plain, knobs):
        a, b = sample(host, "the", params, n=5), sample(torch_ops, "the", params, n=5)
        assert [x.text for x in a] == [x.text for x in b]
        for x, y in zip(a, b, strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


def test_seeds_wrap_around_at_two_to_the_63(engine: Engine):
    last = 2**63 - 1
    wrapped = sample(engine, "the", SampleParams(max_tokens=10, seed=last), n=3)
    assert [s.seed for s in wrapped] == [last, 0, 1]
    first = sample(engine, "the", SampleParams(max_tokens=10, seed=0))[0]
    assert wrapped[1].text == first.text


def test_joining_a_running_batch_changes_nothing(engine: Engine):
    params = SampleParams(max_tokens=20, seed=3)
    solo = sample(engine, "", params)[0]
    batch = Batch(engine)
    first = engine.generation("", params)
    batch.add([first])
    batch.step()
    batch.step()
    batch.add([engine.generation("the", SampleParams(max_tokens=50, seed=n)) for n in range(5)])
    while first.finish_reason is None:
        batch.step()
    assert first.text == solo.text


def test_greedy_and_top_k_1_agree(engine: Engine):
    g = sample(engine, "the", SampleParams(max_tokens=15, temperature=0.0), n=2)
    k = sample(engine, "the", SampleParams(max_tokens=15, top_k=1, seed=5))
    assert g[0].text == g[1].text == k[0].text


def test_stop_strings_cut_the_text(engine: Engine):
    for s in sample(engine, "", SampleParams(max_tokens=60, seed=1, stop=["e", "t"]), n=8):
        assert "e" not in s.text and "t" not in s.text
        # A char model's stop strings start on a token boundary, so the kept text is
        # exactly its kept tokens. (A word model may stop inside a word: its logprob
        # covers the tokens wholly before the stop string.)
        if s.finish_reason == "stop" and engine.tokenizer.kind == "char":
            r = engine.score_batch([s.text], eos=False)[0]
            assert s.logprob == pytest.approx(r.logprob, abs=1e-3)


def test_length_limit_and_zero_tokens(engine: Engine):
    for s in sample(engine, "", SampleParams(max_tokens=3, seed=2), n=4):
        assert s.num_tokens <= 3
        assert s.finish_reason in ("eos", "length")
    s = sample(engine, "the", SampleParams(max_tokens=0))[0]
    assert (s.text, s.num_tokens, s.finish_reason, s.logprob) == ("", 0, "length", 0.0)


def test_stream_mode_models_condition_on_eos(tmp_path: Path):
    ck = load_checkpoint(make_checkpoint(tmp_path / "s", "char", "gru", mode="stream"))
    engine = Engine(ck)
    assert engine.start_id == EOS
    ids = [EOS] + engine.tokenizer.encode("the") + [EOS]
    with torch.no_grad():
        lp, _ = engine.model(torch.tensor([ids[:-1]]))
    expected = sum(lp[0, i, ids[i + 1]].item() for i in range(len(ids) - 1))
    assert engine.score_batch(["the"])[0].logprob == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("rows", [3, 20])  # 20: windows through the host step's `run`
def test_prefill_leaves_each_row_where_its_own_tokens_end(
    engine: Engine, rows: int, monkeypatch: pytest.MonkeyPatch
):
    """Prompts of many lengths at once: each row's state and features are those of its
    own ids stepped one at a time from a zero state, whatever its neighbours' lengths."""
    if engine.host_step is not None:  # every window of 16 rows or more through `run`
        monkeypatch.setattr(type(engine.host_step), "scores", property(lambda s: True))
    ids = engine.tokenizer.encode("the cat sat on the mat and the dog " * 3)
    inputs = [[engine.start_id] + ids[: (7 * r) % 40] for r in range(rows)]
    inputs[0] = [engine.start_id]  # the start token alone
    with torch.inference_mode():
        state, feats = engine.prefill(inputs)
        assert [s.shape[1] for s in state] == [rows] * len(state)
        assert feats.shape[0] == rows
        for r, x in enumerate(inputs):
            one = engine.model.init_state(1, engine.device)
            for t in x:
                f, one = engine.step(np.array([t], dtype=np.int64), one)
            torch.testing.assert_close(feats[r], f[0], atol=1e-5, rtol=1e-5)
            for a, b in zip(state, one, strict=True):
                torch.testing.assert_close(a[:, r], b[:, 0], atol=1e-5, rtol=1e-5)


def test_the_torch_step_is_the_host_step(models_dir: Path):
    """`Engine.step` off the host (torch's fused module on one token, as on a GPU) and
    on it (models/host_step.py) advance the same state to the same features."""
    host = Engine(load_checkpoint(models_dir / "char"))
    torch_ops = Engine(load_checkpoint(models_dir / "char"), host=False)
    ids = np.array([5, 9, 13], dtype=np.int64)
    with torch.inference_mode():
        a_state = b_state = host.model.init_state(3)
        for _ in range(4):
            a, a_state = host.step(ids, a_state)
            b, b_state = torch_ops.step(ids, b_state)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            ids = (ids + 7) % host.model.config.vocab_size
