"""The host step's products: torch's BLAS and numpy's give the same numbers; which one a
weight uses is timed once per shape; numpy's BLAS runs one thread."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from rnnlm.models import blas
from rnnlm.models.blas import Choice, Product


def _weights(k: int, n: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(k * 1000 + n)
    w = torch.randn(k, n, generator=g)
    return w, (torch.randn(n, generator=g) if bias else None)


@pytest.mark.parametrize("choice", ["torch", "numpy", "auto"])
@pytest.mark.parametrize("rows", [1, 3, 5, 40])  # both sides of the few-rows line
@pytest.mark.parametrize("bias", [True, False])
def test_a_product_is_x_times_w_plus_b(choice: Choice, rows: int, bias: bool) -> None:
    w, b = _weights(24, 70, bias)
    p = Product(w, b, choice)
    x = np.random.default_rng(rows).standard_normal((rows, 24)).astype(np.float32)
    want = x.astype(np.float64) @ w.double().numpy()
    if b is not None:
        want += b.double().numpy()
    got = p(x)
    assert got.shape == (rows, 70) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    acc = np.ones((rows, 70), np.float32)
    p.add_to(acc, x)  # the bias is not added: the caller's array already holds it
    np.testing.assert_allclose(acc, 1 + x.astype(np.float64) @ w.double().numpy(), atol=1e-4)


def test_the_weight_is_kept_not_copied() -> None:
    w, b = _weights(8, 16, True)
    p = Product(w, b, "numpy")
    assert p.weight.data_ptr() == w.data_ptr()
    w.mul_(2)  # what the product multiplies by is the tensor it was given
    x = np.ones((1, 8), np.float32)
    assert b is not None
    np.testing.assert_allclose(p(x)[0], w.sum(0).numpy() + b.numpy(), rtol=1e-5)


def test_a_shape_is_timed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def timed(self: Product, rows: int) -> bool:
        calls.append(rows)
        return rows == 1  # numpy's for one row, torch's for many

    monkeypatch.setattr(blas, "_decided", {})
    monkeypatch.setattr(Product, "_numpy_is_faster", timed)
    a = Product(*_weights(16, 48, True))
    b = Product(*_weights(16, 48, True))  # the same shape: decided already
    assert calls == [1, 32]
    assert (a.numpy_few, a.numpy_many) == (b.numpy_few, b.numpy_many) == (True, False)
    Product(*_weights(16, 48, False))  # the bias is not multiplied: the same shape
    Product(*_weights(48, 16, True))  # another shape: timed
    assert calls == [1, 32, 1, 32]


def test_timing_picks_a_library_for_each_row_count() -> None:
    p = Product(*_weights(64, 256, True))
    assert isinstance(p.numpy_few, bool) and isinstance(p.numpy_many, bool)
    forced = Product(*_weights(64, 256, True), choice="torch")
    assert not forced.numpy_few and not forced.numpy_many


def test_numpys_blas_runs_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "_single", False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # torch's own count does not matter
        Product(*_weights(8, 16, True), choice="numpy")
        counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert counts and all(c == 1 for c in counts)
    finally:
        torch.set_num_threads(before)
