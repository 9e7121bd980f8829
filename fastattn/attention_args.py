"""The options every attention backend receives, in one frozen record, and the layout helpers
every layer shares (the kernel launchers included).

A leaf module (it imports only torch), so that every layer, ``kernels/`` included, may import
it while imports still only go downward (docs/architecture.md, "Layers")."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AttentionArgs", "draw_dropout_seed", "dropout_keep_mask", "empty_like_layout", "empty_like_strides",
           "layout_strides", "problem_extent", "with_strides"]


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
    * ``num_splits`` only tunes split-KV decoding; it never changes the result.
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
    num_splits: int = 0  # KV-cache decoding: key-range splits (0 = a heuristic's choice, 1 = none)

    @property
    def has_window(self) -> bool:
        return self.window_left >= 0 or (self.window_right >= 0 and not self.causal)


def draw_dropout_seed(dropout_p: float) -> tuple[int, int]:
    """A fresh dropout ``(seed, offset)`` drawn from torch's default generator, so
    ``torch.manual_seed`` makes dropout reproducible; ``(0, 0)`` without dropout. Every public
    attention function draws exactly one seed per call with dropout, here."""
    if dropout_p == 0.0:
        return 0, 0
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item()), 0


def problem_extent(q: torch.Tensor, k: torch.Tensor, args: AttentionArgs, cu_seqlens_q=None,
                   cu_seqlens_k=None) -> tuple[int, int, int, int]:
    """``(batch, heads, seqlen_q, seqlen_k)`` of a core-op call on ``q`` ``(B, Hq, Lq, D)`` and
    ``k`` ``(B, Hk, Lk, D)``. Varlen: batch counts sequences and the lengths are
    ``args.max_seqlen_q/k`` (computed from ``cu_seqlens`` when 0). These are the dims of the
    dropout counter space (:mod:`fastattn.philox`), so every backend must derive them here."""
    if cu_seqlens_q is None:
        return q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    lq = args.max_seqlen_q or int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    lk = args.max_seqlen_k or int((cu_seqlens_k[1:] - cu_seqlens_k[:-1]).max())
    return cu_seqlens_q.numel() - 1, q.shape[1], lq, lk


def dropout_keep_mask(q: torch.Tensor, k: torch.Tensor, args: AttentionArgs, cu_seqlens_q=None,
                      cu_seqlens_k=None) -> torch.Tensor:
    """The keep mask (True = kept) every backend applies for ``args.dropout_p``/``seed``/``offset``:
    bool ``(batch, Hq, seqlen_q, seqlen_k)`` over :func:`problem_extent` (varlen: sequence
    ``s`` uses ``[s, :, :Lq_s, :Lk_s]``), drawn by :func:`fastattn.philox.dropout_keep_mask`."""
    from fastattn import philox

    return philox.dropout_keep_mask(args.seed, args.offset, args.dropout_p,
                                    *problem_extent(q, k, args, cu_seqlens_q, cu_seqlens_k), device=q.device)


def layout_strides(q: torch.Tensor, head_dim_v: int) -> tuple[int, ...]:
    """Strides of a dense ``(B, H, Lq, head_dim_v)`` tensor whose dims are laid out in memory in
    the same order as ``q``'s (so a flash-layout ``q``, i.e. a ``(B, L, H, D)`` tensor viewed as
    ``(B, H, L, D)``, gets a flash-layout output that transposes back to a contiguous tensor)."""
    shape = (*q.shape[:-1], head_dim_v)
    order = sorted(range(3), key=lambda d: -q.stride(d))  # outer dims, largest stride first
    strides = [0, 0, 0, 1]
    step = head_dim_v
    for d in reversed(order):
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


def empty_like_layout(q: torch.Tensor, head_dim_v: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised output ``(B, H, Lq, head_dim_v)`` with :func:`layout_strides`."""
    return torch.empty_strided((*q.shape[:-1], head_dim_v), layout_strides(q, head_dim_v),
                               dtype=dtype or q.dtype, device=q.device)


def with_strides(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """``t`` itself if it has ``strides``, else a copy that has them. A custom op must return
    the layout its fake implementation promises (torch.compile asserts it); backends that
    cannot write in place into that layout (the reference) are brought to it here."""
    if t.stride() == tuple(strides):
        return t
    out = torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device)
    return out.copy_(t)


def empty_like_strides(x: torch.Tensor) -> tuple[int, ...]:
    """The strides ``torch.empty_like(x)`` gives (computed on the meta device: no allocation)."""
    return torch.empty_like(x, device="meta").stride()
