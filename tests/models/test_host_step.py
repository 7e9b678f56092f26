"""The CPU's step and window pass (products by torch's or numpy's BLAS, gates in numpy)
against torch's fused layer."""

import warnings

import numpy as np
import pytest
import torch

from rnnlm.models import host_step
from rnnlm.models.blas import Choice
from rnnlm.models.host_step import HostStep
from rnnlm.models.model import RNNLM, ModelConfig


def _model(cell: str, layers: int, tied: bool, seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=30, cell=cell, embedding=8, hidden=12, layers=layers, tied=tied)
    m = RNNLM(cfg).eval()
    with torch.no_grad():  # biases away from zero, so that mixing them up would show
        for name, p in m.rnn.named_parameters():
            if name.startswith("bias"):
                p.uniform_(-0.5, 0.5)
    return m


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("tied", [True, False])  # tied: hidden 12 projected to embedding 8
@pytest.mark.parametrize("table", [True, False])  # the first layer's input from a table or not
@pytest.mark.parametrize("blas", ["torch", "numpy"])
def test_a_host_step_is_the_layer_on_one_token(
    cell: str,
    layers: int,
    rows: int,
    tied: bool,
    table: bool,
    blas: Choice,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not table:
        monkeypatch.setattr(host_step, "_TABLE_MAX_BYTES", 0)
    m = _model(cell, layers, tied)
    step = HostStep.of(m, blas)
    assert step is not None and (step.table is not None) == table
    ids = torch.randint(4, 30, (rows, 7))
    with torch.inference_mode():
        _, state = m.features(ids[:, :4])
        for t in range(4, 7):
            want, want_state = m.features(ids[:, t : t + 1], state)
            before = [s.clone() for s in state]
            got, got_state = step.step(ids[:, t].numpy().copy(), state)
            assert got.shape == want[:, 0].shape and got.dtype == torch.float32
            torch.testing.assert_close(got, want[:, 0], atol=1e-5, rtol=1e-5)
            assert len(got_state) == len(want_state)
            for a, b in zip(got_state, want_state, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            for a, b in zip(state, before, strict=True):  # the old state is left as it was
                assert torch.equal(a, b)
            state = got_state  # and the next step goes on from the host's own


def test_a_row_steps_the_same_alone_as_beside_others() -> None:
    m = _model("lstm", 2, True)
    step = HostStep.of(m)
    assert step is not None
    ids = np.array([5, 9, 13, 21], dtype=np.int64)
    state = tuple(torch.randn(2, 4, 12) * 0.5 for _ in range(2))
    with torch.inference_mode():
        together, _ = step.step(ids, state)
        for r in range(4):
            alone, _ = step.step(ids[r : r + 1], tuple(s[:, r : r + 1].contiguous() for s in state))
            torch.testing.assert_close(alone[0], together[r], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("blas", ["torch", "numpy"])
@pytest.mark.parametrize("rows", [1, 6])
@pytest.mark.parametrize("tied", [True, False])
def test_the_output_layer_gives_the_models_log_probs(blas: Choice, rows: int, tied: bool) -> None:
    m = _model("lstm", 2, tied)
    step = HostStep.of(m, blas)
    assert step is not None and step.output is not None
    feats = torch.randn(rows, m.config.embedding if tied else 12)
    with torch.inference_mode():
        got = step.log_probs(feats)
        want = m.log_probs(feats)
    assert got.shape == (rows, 30) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Its own transposed copy: a stale one would only show after training goes on.
    assert m.decoder is not None
    assert step.output.weight.data_ptr() != m.decoder.weight.data_ptr()


def test_an_adaptive_softmax_keeps_the_models_output_layer() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=40, cell="lstm", embedding=8, hidden=12, tied=False, adaptive_cutoffs=[10, 20]
    )
    step = HostStep.of(RNNLM(cfg).eval())
    assert step is not None and step.output is None


def test_reference_cells_and_other_devices_keep_the_torch_step() -> None:
    assert HostStep.of(_model("gru-simple", 1, True)) is None
    assert HostStep.of(_model("lstm-peephole", 1, True)) is None


def test_a_saturated_gate_is_exact_and_quiet() -> None:
    # Pre-activations far past the sigmoid's and tanh's range: exactly 0 and 1, with
    # neither a warning nor a NaN.
    m = _model("lstm", 1, False)
    step = HostStep.of(m)
    assert step is not None and step.table is not None
    step.table[:] = 1e4
    step.table[3] = -1e4
    state = (torch.zeros(1, 2, 12), torch.ones(1, 2, 12))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error")  # numpy's overflow warning would raise here
        feats, (h, c) = step.step(np.array([3, 4]), state)
    assert torch.isfinite(feats).all() and torch.isfinite(c).all()
    # Row 0: every gate shut: i = f = o = 0 -> c 0, h 0. Row 1: all open: c = 1 + tanh(big).
    assert torch.equal(c[0, 0], torch.zeros(12)) and torch.equal(h[0, 0], torch.zeros(12))
    torch.testing.assert_close(c[0, 1], torch.full((12,), 2.0))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("blas", ["torch", "numpy"])
@pytest.mark.parametrize("table", [True, False])
def test_a_window_run_is_the_stack_over_it(
    cell: str, layers: int, tied: bool, blas: Choice, table: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring's and prefill's `run`: a window of steps from a given state, as the fused
    stack runs it, with the first layer's input from the table or one product."""
    if not table:
        monkeypatch.setattr(host_step, "_TABLE_MAX_BYTES", 0)
    m = _model(cell, layers, tied)
    step = HostStep.of(m, blas)
    assert step is not None and (step.table is not None) == table
    ids = torch.randint(4, 30, (5, 11))
    with torch.inference_mode():
        _, state = m.features(ids[:, :3])
        before = [s.clone() for s in state]
        want, want_state = m.features(ids[:, 3:], state)
        got, got_state = step.run(ids[:, 3:].numpy(), state)
        assert got.shape == want.shape == (5, 8, m.config.embedding if tied else 12)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert len(got_state) == len(want_state)
        for a, b in zip(got_state, want_state, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for a, b in zip(state, before, strict=True):  # the state it started from is kept
            assert torch.equal(a, b)
        one, _ = step.run(ids[:, 3:4].numpy(), state)  # a window of one step
        torch.testing.assert_close(one, want[:, :1], atol=1e-5, rtol=1e-5)


def test_a_window_run_shares_the_weights_it_was_built_from() -> None:
    m = _model("lstm", 2, False)
    step = HostStep.of(m)
    assert step is not None
    upper = step.upper[0]
    assert upper.weight_hh_l0.data_ptr() == m.rnn.weight_hh_l1.data_ptr()  # type: ignore[union-attr]
    assert sum(p.numel() for p in upper.parameters()) == sum(
        getattr(m.rnn, f"{n}_l1").numel() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )


def test_only_a_table_that_replaces_a_large_input_product_scores() -> None:
    wide = RNNLM(ModelConfig(vocab_size=30, cell="lstm", embedding=12, hidden=12)).eval()
    narrow = RNNLM(ModelConfig(vocab_size=30, cell="lstm", embedding=8, hidden=12)).eval()
    assert HostStep(wide).scores and not HostStep(narrow).scores
    no_table = HostStep(wide)
    no_table.table = None  # as for a vocabulary too large for one
    assert not no_table.scores
