"""Which precision the training step multiplies in: `--precision fp32|bf16|auto`.

bf16 is autocast (torch.autocast): the recurrent layers' and the decoder's matrix
products run in bfloat16, while the weights, their gradients, the optimizer's state,
the loss (log_softmax autocasts to float32) and every evaluation stay float32, so the
checkpoint is the same kind of model either way and scores the same way. The state
carried from one BPTT window to the next is kept in float32 too.

Why: on a CPU that multiplies bfloat16 natively (Intel's AMX or AVX-512 BF16) a step of
the character defaults (one LSTM layer of 512, batch 32, BPTT 200) takes a third of
the time on 2 threads (fortunes, 2026-12-06, Intel Xeon: 107-121 ms against 291-376),
and a 600-s run sees 1.3-1.8x the tokens and ends better (docs/measured.md). Where the
CPU does not (AVX2 only, as on AMD EPYC before Zen 4), the products would be converted
in software (not measured here): `auto` keeps float32 there. On a GPU, `auto` is bf16
where the device supports it.
"""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively (the CPU's AMX or AVX-512 BF16)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    # Private in torch 2.13 (pinned), hence the getattr: a torch without them says no.
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run with `precision` (one of PRECISIONS) trains in bf16 on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))
