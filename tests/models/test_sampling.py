"""Choosing tokens from a batch of distributions, and the sampling parameters."""

import numpy as np
import pytest
import torch

from rnnlm.models.sampling import Generation, SampleParams, SamplingPlan, choose_tokens
from rnnlm.models.tokenizers import BOS, PAD, UNK


def _rows(temperature, top_k, top_p, min_p):
    """Each row's (temperature, top_k, top_p, min_p): (B, 4), float32, as a batch keeps them."""
    return torch.stack([x.float() for x in (temperature, top_k, top_p, min_p)], 1)


def _plan(*knobs) -> SamplingPlan:
    return SamplingPlan.of_rows(_rows(*knobs).numpy(), torch.device("cpu"))


def _torch(lp, temperature, top_k, top_p, min_p, uniform, plan=None):
    """`choose_tokens` on torch's tensors."""
    return choose_tokens(lp, _rows(temperature, top_k, top_p, min_p), uniform, plan)


def _host(lp, temperature, top_k, top_p, min_p, uniform, plan=None):
    """`choose_tokens` on numpy's arrays: the same tests hold for both kinds."""
    knobs = _rows(temperature, top_k, top_p, min_p).numpy()
    out = choose_tokens(lp.numpy(), knobs, uniform.numpy(), plan)
    assert isinstance(out, np.ndarray)
    return torch.from_numpy(out)


@pytest.fixture(params=["torch", "host"])
def choose(request: pytest.FixtureRequest):
    return _torch if request.param == "torch" else _host


def _knobs(
    n: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
):
    return (
        torch.full((n,), temperature),
        torch.full((n,), top_k, dtype=torch.long),
        torch.full((n,), top_p),
        torch.full((n,), min_p),
    )


def test_specials_are_never_sampled(choose):
    lp = torch.log_softmax(torch.zeros(3, 10), -1)
    lp[:, UNK] = 10.0  # even a huge mass on <unk> is never chosen
    one = torch.ones(3)
    picks = choose(lp, one, torch.zeros(3, dtype=torch.long), one, 0 * one, one * 0.5)
    assert not set(picks.tolist()) & {PAD, UNK, BOS}


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_tokens", -1),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_k", -2),
        ("min_p", 1.0),
        ("seed", -1),
        ("stop", [""]),
    ],
)
def test_sample_params_name_the_bad_field(field: str, value: object):
    with pytest.raises(ValueError, match=field):
        SampleParams(**{field: value})  # type: ignore[arg-type]


def test_inverse_cdf_follows_the_uniform(choose):
    # Mass 0.25 on id 4, 0.75 on id 5 (the specials get none): u below 0.25 picks 4.
    p = torch.zeros(2, 8)
    p[:, 4], p[:, 5] = 0.25, 0.75
    lp = p.log()
    picks = choose(lp, *_knobs(2), torch.tensor([0.2, 0.3]))
    assert picks.tolist() == [4, 5]


def test_greedy_top_k_1_and_tiny_top_p_take_the_argmax(choose):
    torch.manual_seed(0)
    lp = torch.log_softmax(torch.randn(5, 30), -1)
    lp[:, :4] = -30.0  # the specials out of the way of the argmax
    best = lp.argmax(-1).tolist()
    u = torch.rand(5)
    assert choose(lp, *_knobs(5, temperature=0.0), u).tolist() == best
    assert choose(lp, *_knobs(5, top_k=1), u).tolist() == best
    assert choose(lp, *_knobs(5, top_p=1e-6), u).tolist() == best
    assert choose(lp, *_knobs(5, min_p=0.999), u).tolist() == best


def test_top_k_never_leaves_the_top_k(choose):
    torch.manual_seed(1)
    lp = torch.log_softmax(torch.randn(400, 30), -1)
    allowed = (
        lp.masked_fill(
            torch.zeros(30, dtype=torch.bool).index_fill(0, torch.tensor([PAD, UNK, BOS]), True),
            float("-inf"),
        )
        .topk(3)
        .indices
    )
    picks = choose(lp, *_knobs(400, top_k=3), torch.rand(400))
    assert bool((allowed == picks.unsqueeze(1)).any(1).all())


def test_a_row_chooses_the_same_whatever_its_neighbours_ask_for(choose):
    torch.manual_seed(2)
    lp = torch.log_softmax(torch.randn(4, 50), -1)
    u = torch.rand(4)
    alone = [choose(lp[i : i + 1], *_knobs(1), u[i : i + 1]).item() for i in range(4)]
    # Neighbours that truncate, scale and decode greedily change the plan, not row 0.
    t, k, p, m = _knobs(4)
    t[1], k[2], p[3] = 0.0, 5, 0.5
    mixed = choose(lp, t, k, p, m, u, plan=_plan(t, k, p, m))
    assert mixed[0].item() == alone[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_host_and_torch_choose_the_same_tokens(dtype: torch.dtype):
    # Every kind of row at once: plain, tempered, greedy, top-k, top-p, min-p, mixed.
    torch.manual_seed(3)
    n, vocab = 700, 40
    lp = torch.log_softmax(torch.randn(n, vocab, dtype=torch.float64) * 2.5, -1).to(dtype)
    kinds = torch.arange(n) % 7
    t = torch.where(kinds == 1, 0.7, torch.where(kinds == 2, 0.0, 1.0)).to(dtype)
    k = torch.where(kinds == 3, 5, torch.where(kinds == 6, 8, 0))
    p = torch.where(kinds == 4, 0.8, torch.where(kinds == 6, 0.9, 1.0)).to(dtype)
    m = torch.where(kinds == 5, 0.05, 0.0).to(dtype)
    t[6::7] = 1.4
    u = torch.rand(n, dtype=dtype)
    plan = _plan(t, k, p, m)
    want = _torch(lp, t, k, p, m, u, plan=plan)
    got = _host(lp, t, k, p, m, u, plan=plan)
    # Rounding differs (numpy's exp and sums against torch's), so a uniform within an ulp
    # of a boundary may fall either side: a handful of rows at most, never a pattern.
    assert (got != want).sum().item() <= 3
    assert got.dtype == torch.int64


def test_a_generation_holds_back_what_could_still_become_a_stop_string():
    g = Generation(SampleParams(stop=["ab"]), seed=7, prompt_ids=[], prompt_text="")
    g.text = "xxa"  # "a" may be the start of "ab", which would be cut
    assert g.delta() == "xx"
    g.text = "xxac"
    assert g.delta() == "ac"
    g.text = "xxac\ufffd"  # an unfinished UTF-8 character waits for its last byte
    assert g.delta() == ""
    g.finish_reason = "length"
    assert g.delta() == "\ufffd"  # at the end, everything goes out


def test_the_same_seed_draws_the_same_uniforms():
    a = Generation(SampleParams(), seed=7, prompt_ids=[], prompt_text="")
    b = Generation(SampleParams(), seed=7, prompt_ids=[], prompt_text="")
    assert np.array_equal(a.rng.random(5), b.rng.random(5))


@pytest.mark.parametrize("bad", [{"temperature": 101.0}, {"top_logprobs": -1}, {"seed": 2**63}])
def test_sample_params_refuse_out_of_range(bad: dict):
    with pytest.raises(ValueError):
        SampleParams(**bad)
