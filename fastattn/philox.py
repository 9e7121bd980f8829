"""The attention-dropout random stream, in plain PyTorch: the specification kernels follow.

Attention dropout keeps probability ``p_ij`` of batch ``b`` (sequence ``b`` for varlen),
query head ``h``, query row ``i`` and key column ``j`` iff ``u >= dropout_p``, where ``u``
is Triton's ``tl.rand(seed, counter)``: Philox4x32 with 10 rounds (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011) keyed by the 64-bit ``seed``,
on the 64-bit counter::

    counter = offset + ((b * heads + h) * max_seqlen_q + i) * max_seqlen_k + j

(low word in ``c0``, high word in ``c1``, ``c2 = c3 = 0``), whose first output word is
mapped to ``[0, 1)`` as ``tl.rand`` does. Being counter-based, the stream is a pure
function of ``(seed, offset, b, h, i, j)``: the forward and the backward draw the same
mask without storing it, any tile order gives the same mask, and this module reproduces
it bit for bit on any device (the reference backend uses it, tests compare kernels with it).
"""
from __future__ import annotations

import torch

__all__ = ["philox4x32", "uniform", "dropout_keep_mask"]

_MASK32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUNDS = 10
# tl.rand's int32 -> [0, 1) scale: the largest float with (2**31 - 1) * scale < 1 after rounding.
_TO_UNIT = 4.6566127342e-10


def _mul_hi_lo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * x`` for a 32-bit constant ``a`` and int64 ``x`` holding
    32-bit values: the product is formed from 16-bit halves so no int64 product overflows."""
    x_lo, x_hi = x & 0xFFFF, x >> 16
    lo_part = a * x_lo  # < 2**48
    mid = a * x_hi + (lo_part >> 16)  # < 2**49
    hi = mid >> 16
    lo = ((mid & 0xFFFF) << 16) | (lo_part & 0xFFFF)
    return hi & _MASK32, lo & _MASK32


def philox4x32(c0, c1, c2, c3, k0: int, k1: int) -> tuple:
    """Philox4x32-10 of counter words ``(c0, c1, c2, c3)`` (int64 tensors holding 32-bit values)
    under key ``(k0, k1)``: the four output words, as int64 tensors holding 32-bit values."""
    for _ in range(_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniform(seed: int, counter: torch.Tensor) -> torch.Tensor:
    """``tl.rand(seed, counter)`` for an int64 ``counter`` tensor (values in ``[0, 2**63)``):
    float32 uniforms in ``[0, 1)`` of the same shape."""
    seed = int(seed) & ((1 << 64) - 1)
    zero = torch.zeros_like(counter)
    word, _, _, _ = philox4x32(counter & _MASK32, (counter >> 32) & _MASK32, zero, zero, seed & _MASK32, seed >> 32)
    # The first output word as a signed int32, folded onto [0, 2**31) by x -> ~x for x < 0.
    signed = torch.where(word >= 1 << 31, word - (1 << 32), word)
    folded = torch.where(signed < 0, ~signed, signed).to(torch.int32)
    return folded.to(torch.float32) * torch.tensor(_TO_UNIT, dtype=torch.float32)


def dropout_keep_mask(seed: int, offset: int, dropout_p: float, batch: int, heads: int, max_seqlen_q: int,
                      max_seqlen_k: int, device=None) -> torch.Tensor:
    """The attention-dropout keep mask (True = kept), bool ``(batch, heads, max_seqlen_q, max_seqlen_k)``.

    ``batch`` counts sequences (varlen: ``len(cu_seqlens) - 1``; sequence ``b``'s mask is
    ``[b, :, :Lq_b, :Lk_b]``); ``heads`` counts query heads. Kept with probability
    ``1 - dropout_p``; the comparison is made in float32, as kernels make it.
    """
    rows = torch.arange(batch * heads * max_seqlen_q, dtype=torch.int64, device=device)
    cols = torch.arange(max_seqlen_k, dtype=torch.int64, device=device)
    counter = int(offset) + rows[:, None] * max_seqlen_k + cols[None, :]
    keep = uniform(seed, counter) >= torch.tensor(dropout_p, dtype=torch.float32)
    return keep.reshape(batch, heads, max_seqlen_q, max_seqlen_k)
