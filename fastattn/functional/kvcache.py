"""``fastattn.flash_attn_with_kvcache``: decoding against a KV cache, flash-attn 2.x semantics.

The core op (:mod:`fastattn.ops.kvcache`) decodes against a contiguous per-sequence cache
``(B, Lcache, Hk, D)`` and appends new keys/values in place. The rest of flash-attn's
signature is layered here, in torch ops that trace under ``torch.compile``:

* ``rotary_cos``/``rotary_sin``: rotary embedding of ``q`` and of the new ``k`` before they
  are used or written (:func:`rotary`);
* ``block_table`` (paged cache), ``cache_batch_idx`` and ``cache_leftpad`` go to the core op,
  which checks their values once and either hands them to a backend that addresses the cache
  through them in place (the Triton decode kernel: no copy) or writes the new keys/values
  through them and gathers each sequence's visible keys into a contiguous cache for the
  others (:mod:`fastattn.ops.kvcache_index`; one extra pass over the cache).
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from fastattn import dispatch
from fastattn import validation as check
from fastattn.functional.attention import _flash_options, _slopes
from fastattn.attention_args import AttentionArgs
from fastattn.ops.kvcache import attention_kvcache as _core_kvcache
from fastattn.functional.kvcache_eager import decode_step
from fastattn.ops.kvcache_index import check_index_values, gather_visible

def rotary(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, interleaved: bool) -> Tensor:
    """Rotary embedding of ``x`` ``(B, L, H, D)`` with ``positions`` int ``(B, L)``, as flash-attn
    applies it: ``cos``/``sin`` ``(max_position, R / 2)`` rotate the first ``R`` dims, pairing
    dims ``(2i, 2i + 1)`` when ``interleaved`` else ``(i, i + R / 2)`` (GPT-NeoX); the rotation
    is computed in fp32 and rounded once to ``x``'s dtype."""
    half = cos.shape[-1]
    c = cos[positions].float()[:, :, None, :]  # (B, L, 1, R / 2)
    s = sin[positions].float()[:, :, None, :]
    head = x[..., : 2 * half].float()
    if interleaved:
        x1, x2 = head[..., 0::2], head[..., 1::2]
        rotated = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = head[..., :half], head[..., half:]
        rotated = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rotated.to(x.dtype), x[..., 2 * half:]), dim=-1)


def _int_vector(name: str, x, batch: int, device) -> Tensor:
    check.tensor(name, x, ndim=1, dtypes=(torch.int32, torch.int64))
    if x.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(x.shape)}")
    check.same_device(("q", name), torch.empty(0, device=device), x)
    return _to_int32(x)


def _to_int32(x: Tensor) -> Tensor:
    """int32 as the kernels index, saturating int64 values out of its range so that the core op's
    range checks reject them (a plain cast would wrap them into range: a silent wrong index)."""
    if x.dtype == torch.int64:
        x = x.clamp(-(2 ** 31), 2 ** 31 - 1)
    return x.to(torch.int32)


def flash_attn_with_kvcache(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor] = None, v: Optional[Tensor] = None,
    rotary_cos: Optional[Tensor] = None, rotary_sin: Optional[Tensor] = None, cache_seqlens=None,
    cache_batch_idx: Optional[Tensor] = None, cache_leftpad: Optional[Tensor] = None,
    block_table: Optional[Tensor] = None, softmax_scale: Optional[float] = None, causal: bool = False,
    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0, rotary_interleaved: bool = True,
    alibi_slopes: Optional[Tensor] = None, num_splits: int = 0, return_softmax_lse: bool = False, *,
    learnable_sink: Optional[Tensor] = None, backend: Optional[str] = None,
):
    """Drop-in for flash-attn 2's ``flash_attn_with_kvcache``: decoding against a KV cache.

    Args:
        q: ``(batch, seqlen_q, heads, head_dim)`` (usually ``seqlen_q == 1``).
        k_cache, v_cache: ``(batch_cache, seqlen_cache, heads_k, head_dim[_v])``, or with
            ``block_table`` pages ``(num_blocks, page_block_size, heads_k, head_dim[_v])``.
            Written in place when ``k``/``v`` are given.
        k, v: optional new keys/values ``(batch, seqlen_new, heads_k, head_dim[_v])``, written
            *in place* at positions ``cache_seqlens[b] .. cache_seqlens[b] + seqlen_new`` before
            attending.
        rotary_cos, rotary_sin: optional ``(max_position, rotary_dim / 2)``: rotary embedding of
            the new ``k`` (at positions ``cache_seqlens[b] + t``) and of ``q`` (row ``i`` at
            ``cache_seqlens[b] + i`` when causal or windowed, else all rows at
            ``cache_seqlens[b]``), as flash-attn applies it; needs ``k``/``v``.
        cache_seqlens: int or int32 ``(batch,)``: tokens already in each cache; ``None`` = the
            whole cache (then ``k``/``v`` cannot be given).
        cache_batch_idx: int32 ``(batch,)``: the cache row of each sequence (default ``b``).
        cache_leftpad: int32 ``(batch,)``: where each sequence's keys start in its cache (default
            0); keys before it are not attended.
        block_table: int32 ``(batch, max_blocks)``: paged cache; logical position ``p`` of
            sequence ``b`` is row ``p % page_block_size`` of block ``block_table[b, p //
            page_block_size]``. Any ``page_block_size`` >= 1 (flash-attn's multiples of 256,
            vLLM-style 16, ...): the Triton kernel reads the pages in place through the table;
            other backends decode a gathered copy. Table entries past a sequence's last used
            page are never read.
        softmax_scale, causal, window_size, softcap, alibi_slopes: as :func:`flash_attn_func`,
            aligned bottom-right against the visible keys ``cache_leftpad[b] ..
            cache_seqlens[b] + seqlen_new``.
        rotary_interleaved: pair dims ``(0, 1), (2, 3), ...`` (True) or ``(i, i + rotary_dim / 2)``.
        num_splits: key-range splits of the split-KV kernel; 0 = chosen by a heuristic, 1 = none.
        return_softmax_lse: also return the LSE ``(batch, heads, seqlen_q)``.
        learnable_sink: attention sinks, ``(heads,)`` logits, as :func:`flash_attn_func`.
        backend: see :func:`fastattn.scaled_dot_product_attention`.

    Returns:
        ``out`` ``(batch, seqlen_q, heads, head_dim_v)``, or ``(out, softmax_lse)``. No backward.
    """
    if (rotary_cos is None and rotary_sin is None and cache_batch_idx is None and cache_leftpad is None
            and block_table is None and alibi_slopes is None and learnable_sink is None):
        # A plain eager decoding step on the CPU takes the short route when cheap tests prove
        # its arguments valid (else None, and the checks below run and raise).
        result = decode_step(q, k_cache, v_cache, k, v, cache_seqlens, softmax_scale, causal, window_size, softcap,
                             num_splits, return_softmax_lse, backend)
        if result is not None:
            return result
    check.tensor("q", q, ndim=4)
    check.tensor("k_cache", k_cache, ndim=4)
    check.tensor("v_cache", v_cache, ndim=4)
    check.same_dtype(("q", "k_cache", "v_cache"), q, k_cache, v_cache)
    check.same_device(("q", "k_cache", "v_cache", "k", "v"), q, k_cache, v_cache, k, v)
    batch, seqlen_q, heads, head_dim = q.shape
    paged = block_table is not None
    if tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]):
        raise ValueError(f"v_cache must match k_cache in its first three dims {tuple(k_cache.shape[:3])}, "
                         f"got {tuple(v_cache.shape[:3])}")
    check.dim_equal("k_cache", "a head dim of", k_cache.shape[3], head_dim, "q")
    check.head_dim("q", head_dim, check.MAX_HEAD_DIM)
    check.head_dim("v_cache", v_cache.shape[-1], check.MAX_HEAD_DIM)
    check.gqa_heads("q", heads, "k_cache", k_cache.shape[2])
    check.writable("k_cache", k_cache)
    check.writable("v_cache", v_cache)
    check.last_dim_contiguous("k_cache", k_cache)
    check.last_dim_contiguous("v_cache", v_cache)
    if paged:
        check.tensor("block_table", block_table, ndim=2, dtypes=(torch.int32, torch.int64))
        check.same_device(("q", "block_table"), q, block_table)
        check.dim_equal("block_table", "a batch size of", block_table.shape[0], batch, "q")
        page = k_cache.shape[1]
        if page < 1:
            raise ValueError(f"with block_table, k_cache is (num_blocks, page_block_size, heads_k, head_dim) with "
                             f"page_block_size >= 1, got {page}")
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx cannot be combined with block_table (the table maps every sequence)")
        capacity = block_table.shape[1] * page
    else:
        capacity = k_cache.shape[1]
        if cache_batch_idx is None:
            check.dim_equal("k_cache", "a batch size of", k_cache.shape[0], batch, "q")
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (new keys and values to append) or both be None")
    new = 0
    if k is not None:
        check.tensor("k", k, ndim=4)
        check.tensor("v", v, ndim=4)
        check.same_dtype(("q", "k", "v"), q, k, v)
        if tuple(k.shape) != (batch, k.shape[1], k_cache.shape[2], head_dim):
            raise ValueError(f"k must be (batch, seqlen_new, heads_k, head_dim) = ({batch}, *, "
                             f"{k_cache.shape[2]}, {head_dim}), got {tuple(k.shape)}")
        if tuple(v.shape) != (*k.shape[:3], v_cache.shape[3]):
            raise ValueError(f"v must be {(*k.shape[:3], v_cache.shape[3])}, got {tuple(v.shape)}")
        new = k.shape[1]
        if cache_seqlens is None:
            raise ValueError("cache_seqlens must be given when appending k/v (where to write them)")
    if cache_seqlens is None:
        lens = torch.full((batch,), capacity, dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, numbers.Integral) and not isinstance(cache_seqlens, bool):
        lens = torch.full((batch,), int(cache_seqlens), dtype=torch.int32, device=q.device)
    else:
        lens = _int_vector("cache_seqlens", cache_seqlens, batch, q.device)
    leftpad = None if cache_leftpad is None else _int_vector("cache_leftpad", cache_leftpad, batch, q.device)
    batch_idx = None if cache_batch_idx is None else _int_vector("cache_batch_idx", cache_batch_idx, batch, q.device)
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None:
        if k is None:
            raise ValueError("rotary_cos/rotary_sin rotate the new keys: give k and v too (as flash-attn requires)")
        for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
            check.tensor(name, t, ndim=2)
            check.same_device(("q", name), q, t)
        if tuple(rotary_sin.shape) != tuple(rotary_cos.shape):
            raise ValueError(f"rotary_sin must have rotary_cos's shape {tuple(rotary_cos.shape)}, "
                             f"got {tuple(rotary_sin.shape)}")
        if not 1 <= 2 * rotary_cos.shape[1] <= head_dim:
            raise ValueError(f"rotary_cos must be (max_position, rotary_dim / 2) with rotary_dim <= head_dim "
                             f"({head_dim}), got {tuple(rotary_cos.shape)}")
    rotary_interleaved = check.boolean("rotary_interleaved", rotary_interleaved)
    if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0 = chosen by a heuristic), got {num_splits!r}")
    # flash_attn_func's option checks (scale, causal, window, softcap), without dropout.
    options = _flash_options(head_dim, 0.0, softmax_scale, causal, window_size, softcap, False)
    return_softmax_lse = check.boolean("return_softmax_lse", return_softmax_lse)
    backend = dispatch.check_backend_name(backend) if backend is not None else None
    slopes = _slopes(alibi_slopes, batch, heads, q.device)
    sink = check.learnable_sink("learnable_sink", learnable_sink, heads, q.device)
    if rotary_cos is not None:
        local = options["causal"] or options["window_left"] >= 0 or options["window_right"] >= 0
        rows_q = torch.arange(seqlen_q, device=q.device) if local else torch.zeros(seqlen_q, dtype=torch.long,
                                                                                  device=q.device)
        q = rotary(q, rotary_cos, rotary_sin, lens.long()[:, None] + rows_q[None, :], rotary_interleaved)
        k = rotary(k, rotary_cos, rotary_sin, lens.long()[:, None] + torch.arange(new, device=q.device)[None, :],
                   rotary_interleaved)
    q = q if q.stride(-1) == 1 else q.contiguous()
    if k is not None:
        k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))

    table = None if block_table is None else _to_int32(block_table)
    args = AttentionArgs(max_seqlen_q=seqlen_q, max_seqlen_k=capacity, num_splits=int(num_splits), **options)
    if _torch_is_faster(q, k_cache, k, lens, args, backend, slopes, sink):
        from fastattn.backends.cpu.decode_crossover import torch_decode

        # Eager only (see _torch_is_faster): the index values are checked here, as the core op
        # would check them, and torch's kernel is given the contiguous visible keys.
        check_index_values(lens, new, k_cache, table, batch_idx, leftpad)
        if paged or batch_idx is not None or leftpad is not None:
            k_cache, v_cache, lens = gather_visible(k_cache, v_cache, k, v, lens, leftpad, batch_idx, table)
            k = v = None
        out, lse = torch_decode(q, k_cache, v_cache, k, v, lens, args.scale)
        return (out, lse) if return_softmax_lse else out
    # The caches as given (paged or not): every backend's support check looks at dtypes, head
    # dims and last-dim strides, which a gathered copy would share.
    name = dispatch.select("kvcache_fwd", backend, q.device, q, k_cache, v_cache, k, v, lens,
                           alibi_slopes=slopes, args=args)
    out, lse = _core_kvcache(q, k_cache, v_cache, k, v, lens, args, name, alibi_slopes=slopes, learnable_sink=sink,
                             block_table=table, cache_batch_idx=batch_idx, cache_leftpad=leftpad)
    return (out, lse) if return_softmax_lse else out


def _torch_is_faster(q, k_cache, k_new, lens, args, backend, slopes, sink) -> bool:
    """``auto`` on CPU tensors: whether torch's flash CPU kernel decodes this call faster than the
    native one, by the measured crossover table (eager calls only: the lookup reads
    ``cache_seqlens``; a traced call keeps the native kernel)."""
    if (backend or dispatch.current_backend()) != "auto" or torch.compiler.is_compiling():
        return False
    from fastattn.backends.cpu import decode_crossover as crossover

    if not crossover.eligible(q, k_new, args, slopes, sink):
        return False
    keys = int(lens.max()) + (0 if k_new is None else k_new.shape[1])
    return crossover.prefer_torch(q.dtype, q.shape[2] // k_cache.shape[2], keys, q.shape[3], q.shape[0] * k_cache.shape[2])
