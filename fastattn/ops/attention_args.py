"""The options every attention backend receives, in one frozen record."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionArgs:
    """Options of one attention call, shared by every backend.

    Masking conventions (query row ``i``, key column ``j``, per sequence of
    lengths ``Lq``/``Lk``; ``off = Lk - Lq`` if ``bottom_right`` else ``0``):

    * ``causal``: key ``j`` is visible iff ``j <= i + off``. ``bottom_right``
      is flash-attn's alignment, top-left (``off = 0``) is SDPA's.
    * ``window_left``/``window_right`` (``-1`` = unbounded): visible iff
      ``i + off - window_left <= j <= i + off + window_right``; ``causal``
      implies ``window_right = 0``.
    * ``softcap`` (``0`` = off): ``s = softcap * tanh(s / softcap)`` on the
      scaled scores, before ALiBi and masks are added.
    * ALiBi adds ``-slope[b, h] * |i + off - j|`` (``off = Lk - Lq`` always,
      as flash-attn does) to the scores.
    * ``dropout_p`` drops probabilities after the softmax (kept ones scaled by
      ``1 / (1 - p)``) with a counter-based RNG keyed by ``(seed, offset)``.

    A row that sees no key gives an output of 0 and an LSE of ``+inf``.
    """

    scale: float
    causal: bool = False
    bottom_right: bool = False
    window_left: int = -1
    window_right: int = -1
    softcap: float = 0.0
    dropout_p: float = 0.0
    seed: int = 0
    offset: int = 0
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    deterministic: bool = False

    @property
    def has_window(self) -> bool:
        return self.window_left >= 0 or (self.window_right >= 0 and not self.causal)


def empty_like_layout(q: torch.Tensor, head_dim_v: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised output ``(B, H, Lq, head_dim_v)`` whose dims are laid out in memory
    in the same order as ``q``'s (so a flash-layout ``q``, i.e. a ``(B, L, H, D)`` tensor
    viewed as ``(B, H, L, D)``, gets a flash-layout output that transposes back to a
    contiguous tensor)."""
    shape = (*q.shape[:-1], head_dim_v)
    order = sorted(range(3), key=lambda d: -q.stride(d))  # outer dims, largest stride first
    perm_shape = [shape[d] for d in order] + [head_dim_v]
    buf = torch.empty(perm_shape, dtype=dtype or q.dtype, device=q.device)
    inverse = [0] * 3
    for pos, d in enumerate(order):
        inverse[d] = pos
    return buf.permute(*inverse, 3)
