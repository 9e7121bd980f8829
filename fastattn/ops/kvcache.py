"""``fastattn::attention_kvcache``: decoding against a KV cache (no backward).

The op mutates ``k_cache``/``v_cache`` in place when new keys/values are given
(flash-attn's ``flash_attn_with_kvcache`` contract), so it declares them in
``mutates_args``.
"""
from __future__ import annotations

from dataclasses import astuple
from typing import Optional

import torch
from torch import Tensor

from fastattn import dispatch
from fastattn import validation as check
from fastattn.ops.attention import _args
from fastattn.ops.eager import runs_eagerly
from fastattn.attention_args import AttentionArgs, with_strides
from fastattn.ops.kvcache_index import check_index_values, gather_visible
from fastattn.ops.sink import apply_sink


def _decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, k_new: Optional[Tensor], v_new: Optional[Tensor],
            cache_seqlens: Tensor, alibi_slopes: Optional[Tensor], args: AttentionArgs, backend: str,
            learnable_sink: Optional[Tensor], block_table: Optional[Tensor], cache_batch_idx: Optional[Tensor],
            cache_leftpad: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The op's body: the backend's ``kvcache_fwd``, given the indexed caches as it takes them."""
    if check.reads_values_now(cache_seqlens):  # values: checked here, once, where they are concrete
        check_index_values(cache_seqlens, 0 if k_new is None else k_new.shape[1], k_cache, block_table,
                           cache_batch_idx, cache_leftpad)
    impl = dispatch.implementation("kvcache_fwd", backend)
    index = dict(block_table=block_table, cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad)
    if all(t is None for t in index.values()):
        out, lse = impl.fn(q, k_cache, v_cache, k_new, v_new, cache_seqlens, alibi_slopes=alibi_slopes, args=args)
    elif getattr(impl.fn, "native_paging", False):  # reads the caches through the indices in place
        out, lse = impl.fn(q, k_cache, v_cache, k_new, v_new, cache_seqlens, alibi_slopes=alibi_slopes, args=args,
                           **index)
    else:  # a contiguous copy of each sequence's visible keys (the append lands in the real caches)
        k_vis, v_vis, lens = gather_visible(k_cache, v_cache, k_new, v_new, cache_seqlens, cache_leftpad,
                                            cache_batch_idx, block_table)
        out, lse = impl.fn(q, k_vis, v_vis, None, None, lens, alibi_slopes=alibi_slopes, args=args)
    if learnable_sink is not None:  # exact for every backend (fastattn.ops.sink); out is (B, Lq, Hq, Dv)
        out, lse = apply_sink(out.transpose(1, 2), lse, learnable_sink)
        out = out.transpose(1, 2)
    # The contiguous layouts the fake implementation promises (torch.compile asserts them).
    return (with_strides(out, torch.empty(out.shape, device="meta").stride()),
            with_strides(lse, torch.empty(lse.shape, device="meta").stride()))


@torch.library.custom_op("fastattn::attention_kvcache", mutates_args=("k_cache", "v_cache"))
def _attention_kvcache(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k_new: Optional[Tensor], v_new: Optional[Tensor],
    cache_seqlens: Tensor, alibi_slopes: Optional[Tensor],
    scale: float, causal: bool, bottom_right: bool, window_left: int, window_right: int,
    softcap: float, dropout_p: float, seed: int, offset: int, max_seqlen_q: int, max_seqlen_k: int,
    deterministic: bool, num_splits: int, backend: str, learnable_sink: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None, cache_batch_idx: Optional[Tensor] = None,
    cache_leftpad: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    args = _args(scale, causal, bottom_right, window_left, window_right, softcap, dropout_p, seed, offset,
                 max_seqlen_q, max_seqlen_k, deterministic, num_splits)
    return _decode(q, k_cache, v_cache, k_new, v_new, cache_seqlens, alibi_slopes, args, backend, learnable_sink,
                   block_table, cache_batch_idx, cache_leftpad)


@_attention_kvcache.register_fake
def _(q, k_cache, v_cache, k_new, v_new, cache_seqlens, alibi_slopes, *rest):
    batch, seqlen_q, heads, _ = q.shape
    out = q.new_empty(batch, seqlen_q, heads, v_cache.shape[-1])
    lse = q.new_empty(batch, heads, seqlen_q, dtype=torch.float32)
    return out, lse


def attention_kvcache(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k_new: Optional[Tensor], v_new: Optional[Tensor],
    cache_seqlens: Tensor, args: AttentionArgs, backend: str, *, alibi_slopes: Optional[Tensor] = None,
    learnable_sink: Optional[Tensor] = None, block_table: Optional[Tensor] = None,
    cache_batch_idx: Optional[Tensor] = None, cache_leftpad: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Decode ``q`` ``(B, Lq, Hq, D)`` against ``k_cache``/``v_cache`` ``(B, Lcache, Hk, D)``.

    ``cache_seqlens`` int32 ``(B,)``: tokens already in each cache. ``k_new``/``v_new``
    ``(B, Lnew, Hk, D)`` (optional) are appended in place at those positions first.
    ``block_table`` int32 ``(B, max_blocks)`` (caches then ``(num_blocks, page, Hk, D)``),
    ``cache_batch_idx`` and ``cache_leftpad`` int32 ``(B,)``: flash-attn's indexed caches
    (:mod:`fastattn.ops.kvcache_index`). Index values are checked here, once.
    Returns ``(out (B, Lq, Hq, Dv), lse (B, Hq, Lq))``.
    """
    if runs_eagerly(q, k_cache, v_cache, k_new, v_new, cache_seqlens, alibi_slopes, learnable_sink, block_table,
                    cache_batch_idx, cache_leftpad):
        # No tracer watching: the op's body directly (fastattn.ops.eager says why), bumping the
        # caches' version counters as the op's in-place contract does.
        out, lse = _decode(q, k_cache, v_cache, k_new, v_new, cache_seqlens, alibi_slopes, args, backend,
                           learnable_sink, block_table, cache_batch_idx, cache_leftpad)
        if k_new is not None and not k_cache.is_inference():
            torch.autograd.graph.increment_version((k_cache, v_cache))
        return out, lse
    return _attention_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens, alibi_slopes,
                              *astuple(args), backend, learnable_sink, block_table, cache_batch_idx, cache_leftpad)
