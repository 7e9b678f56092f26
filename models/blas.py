"""The CPU decoding step's matrix products: torch's BLAS or numpy's, whichever is the faster.

torch's CPU wheel multiplies with MKL; numpy's wheel carries OpenBLAS. Which of the
two runs a decoding step's shapes faster depends on the CPU: on the AMD EPYC of this
project's benches OpenBLAS was the faster or even on every shape, while MKL is
Intel's own library and may well be the faster on an Intel CPU (docs/measured.md,
"Why the CPU path is shaped as it is", has the timings). So a `Product` times its
weight both ways once, when it is built (a few milliseconds), at one row and at 32,
and each call then takes the faster for its number of rows. The two agree to float32
rounding (about 1e-7 relative), as products of different shapes already do; a row's
numbers never depend on the other rows.

numpy's BLAS is kept to one thread (through threadpoolctl), whatever torch's
count: two pools of threads that each spin for a while after their work, torch's
OpenMP and OpenBLAS's own, fight over the same cores when a step alternates
between them (a product by each in turn ran 30 times slower than either alone at
2 threads each on 2 cores). At one thread OpenBLAS runs on the calling thread,
torch's pool is left alone, and the timing compares torch's threads with
OpenBLAS's one.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

Choice = Literal["auto", "torch", "numpy"]

_FEW_ROWS = 4  # at most this many rows: the one-row timing decides; more: the 32-row one
_MARGIN = 0.95  # numpy's BLAS only where it is at least 5% faster: no flip on noise
_SAMPLE_S = 5e-4  # each timing runs about this long

_single = False  # numpy's BLAS limited to one thread already
# Timed once per shape in a process (the speed is the shape's, not the values'): a
# reloaded model, or a test's hundredth engine, does not time its weights again.
_decided: dict[tuple[Any, ...], tuple[bool, bool]] = {}


def single_threaded() -> None:
    """Limit numpy's BLAS to one thread, process-wide (once; see the module's docstring)."""
    global _single
    if not _single:
        threadpool_limits(limits=1, user_api="blas")
        _single = True


class Product:
    """x (B, K) @ W (K, N), plus a bias (N,) where there is one, into numpy arrays."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, choice: Choice = "auto") -> None:
        """`weight` (K, N), contiguous, float, on the CPU (kept, not copied); `choice`:
        time both libraries ("auto"), or always one of them (tests, measurements)."""
        assert weight.dim() == 2 and weight.is_contiguous() and weight.device.type == "cpu"
        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        self._w = self.weight.numpy()  # the same memory
        self._b = None if self.bias is None else self.bias.numpy()
        if choice != "torch":
            single_threaded()
        if choice == "auto":
            key = (*weight.shape, weight.dtype, torch.get_num_threads())
            if key not in _decided:
                _decided[key] = (self._numpy_is_faster(1), self._numpy_is_faster(32))
            few, many = _decided[key]
        else:
            few = many = choice == "numpy"
        self.numpy_few, self.numpy_many = few, many

    def _uses_numpy(self, rows: int) -> bool:
        return self.numpy_few if rows <= _FEW_ROWS else self.numpy_many

    def __call__(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """x (B, K) -> x @ W + bias, (B, N): a new array."""
        if self._uses_numpy(x.shape[0]):
            out: np.ndarray[Any, Any] = np.matmul(x, self._w)
            if self._b is not None:
                out += self._b
            return out
        xt, w = torch.from_numpy(x), self.weight
        y = torch.mm(xt, w) if self.bias is None else torch.addmm(self.bias, xt, w)
        return y.numpy()

    def add_to(self, acc: np.ndarray[Any, Any], x: np.ndarray[Any, Any]) -> None:
        """acc (B, N) += x (B, K) @ W, in place (the bias is not added)."""
        if self._uses_numpy(x.shape[0]):
            acc += np.matmul(x, self._w)
        else:
            torch.from_numpy(acc).addmm_(torch.from_numpy(x), self.weight)

    def _numpy_is_faster(self, rows: int) -> bool:
        """Time both libraries on `rows` rows of this weight, alternately; the best of
        three each."""
        x = np.random.default_rng(0).standard_normal((rows, self._w.shape[0]), np.float32)
        x = x.astype(self._w.dtype, copy=False)
        xt = torch.from_numpy(x)
        w = self.weight

        def with_torch() -> None:
            torch.mm(xt, w)

        def with_numpy() -> None:
            np.matmul(x, self._w)

        with_torch()  # first calls: buffers, thread pools
        with_numpy()
        t0 = time.perf_counter()
        with_torch()
        calls = int(min(200, max(1, _SAMPLE_S / max(time.perf_counter() - t0, 1e-7))))
        best = {with_torch: float("inf"), with_numpy: float("inf")}
        for _ in range(3):
            for fn in best:
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                best[fn] = min(best[fn], time.perf_counter() - t0)
        return best[with_numpy] < _MARGIN * best[with_torch]
