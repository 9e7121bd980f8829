"""Public attention functions: SDPA layout, flash layout and varlen (the KV-cache function is
in :mod:`fastattn.functional.kvcache`).

Each is a thin view in front of one core op (:mod:`fastattn.ops.attention`,
:mod:`fastattn.ops.kvcache`): validate once (:mod:`fastattn.validation`),
build :class:`~fastattn.attention_args.AttentionArgs`, pick a backend
(:mod:`fastattn.dispatch`), reshape by views (never copies of q/k/v), call.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastattn import dispatch, reference
from fastattn import validation as check
from fastattn.ops.attention import attention as _core_attention
from fastattn.attention_args import AttentionArgs, draw_dropout_seed

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FWD, _FWD_BWD = ("attention_fwd",), ("attention_fwd", "attention_bwd")


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _dropout_probs(q, k, args, alibi_slopes, cu_q=None, cu_k=None, sink=None) -> Optional[Tensor]:
    """flash-attn's ``S_dmask`` for ``return_attn_probs=True``: ``None`` without dropout, else the
    softmax probabilities ``(batch, heads, seqlen_q, seqlen_k)`` (varlen: ``(n, heads, max_seqlen_q,
    max_seqlen_k)``, zero-padded) in q's dtype, negated where dropout dropped them, so
    ``S_dmask >= 0`` is the keep mask the kernel applied (the same counter-based draw,
    :mod:`fastattn.philox`). Materialises ``O(Lq * Lk)``: meant for tests, as in flash-attn."""
    if args.dropout_p == 0:
        return None
    from fastattn.attention_args import dropout_keep_mask

    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    probs = reference.attention_probabilities(
        q.to(compute), k.to(compute), args, alibi_slopes=None if alibi_slopes is None else alibi_slopes.to(compute),
        cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=args.max_seqlen_q, max_seqlen_k=args.max_seqlen_k,
        learnable_sink=sink)
    keep = dropout_keep_mask(q, k, args, cu_q, cu_k)
    return torch.where(keep, probs, -probs).to(q.dtype)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    # Kernels read rows of head_dim by pointer arithmetic; anything else is taken by strides.
    return x if x.stride(-1) == 1 else x.contiguous()


def _select(q, k, v, args, backend, *, attn_mask=None, alibi_slopes=None, cu_q=None, cu_k=None) -> str:
    ops = _FWD_BWD if _needs_grad(q, k, v, attn_mask) else _FWD
    if _needs_grad(attn_mask):  # a float mask being trained: the backend must also give its gradient
        ops = ("attention_fwd", "attention_bwd_mask_grad")
    return dispatch.select(ops, backend, q.device, q, k, v, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                           cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, args=args)


def _run_core(q, k, v, args, backend, *, attn_mask=None, alibi_slopes=None, cu_q=None, cu_k=None, name=None,
              sink=None):
    if name is None:
        name = _select(q, k, v, args, backend, attn_mask=attn_mask, alibi_slopes=alibi_slopes, cu_q=cu_q, cu_k=cu_k)
    return _core_attention(q, k, v, args, name, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                           cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, learnable_sink=sink)


# ----------------------------------------------------------------------------- SDPA


def scaled_dot_product_attention(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
    backend: Optional[str] = None,
) -> Tensor:
    """Drop-in for :func:`torch.nn.functional.scaled_dot_product_attention`.

    Args:
        query: ``(N, ..., Hq, L, E)``; key: ``(N, ..., Hk, S, E)``; value: ``(N, ..., Hk, S, Ev)``.
        attn_mask: broadcastable to ``(N, ..., Hq, L, S)``: bool (True = takes part) or a float
            of the query's dtype added to the scores. Not together with ``is_causal``.
        dropout_p: probability of dropping an attention weight (apply only in training).
        is_causal: mask keys after the query position, aligned top-left (``j <= i``).
        scale: score scale, default ``1 / sqrt(E)``.
        enable_gqa: allow ``Hq`` to be a multiple of ``Hk`` (grouped-query attention).
        backend: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"reference"``; default
            the enclosing ``fastattn.backend`` block's, else ``"auto"``.

    Returns:
        ``(N, ..., Hq, L, Ev)`` in the query's dtype. A row whose every key is masked gives 0.

    Served by the fastattn kernels for 4-D fp16/bf16/fp32 inputs with ``Ev == E <= 256``;
    anything else (3-D inputs, float64, ``Ev != E``, ``E > 256``, a float mask that requires
    grad) falls back to torch under ``auto`` and to :mod:`fastattn.reference` under
    ``backend="reference"``; another explicit backend raises ``ValueError``.
    """
    q = check.tensor("query", query, min_ndim=2)
    k = check.tensor("key", key, min_ndim=2)
    v = check.tensor("value", value, min_ndim=2)
    check.same_dtype(("query", "key", "value"), q, k, v)
    check.same_device(("query", "key", "value", "attn_mask"), q, k, v, attn_mask)
    if k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"query, key and value must have the same number of dims, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check.dim_equal("key", "a head dim (last dim) of", k.shape[-1], q.shape[-1], "query")
    check.dim_equal("value", "a sequence length (dim -2) of", v.shape[-2], k.shape[-2], "key")
    if k.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"value must have key's batch and head dims {tuple(k.shape[:-2])}, got {tuple(v.shape[:-2])}")
    if q.shape[:-3] != k.shape[:-3]:
        raise ValueError(f"query, key and value must have the same batch dims, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dim() >= 3 and q.shape[-3] != k.shape[-3]:
        if not enable_gqa:
            raise ValueError(f"query has {q.shape[-3]} heads and key {k.shape[-3]}: pass enable_gqa=True "
                             f"for grouped-query attention, or give them the same number of heads")
        check.gqa_heads("query", q.shape[-3], "key", k.shape[-3])
    dropout_p = check.probability("dropout_p", dropout_p)
    is_causal = check.boolean("is_causal", is_causal)
    scale = check.optional_scale("scale", scale)
    if attn_mask is not None:
        if is_causal:
            raise ValueError("attn_mask and is_causal=True cannot be given together (as in torch); "
                             "fold the causal mask into attn_mask")
        check.mask("attn_mask", attn_mask, q.dtype, (*q.shape[:-1], k.shape[-2]))
    backend = dispatch.check_backend_name(backend) if backend is not None else None

    covered = (
        q.dim() == 4 and q.dtype in KERNEL_DTYPES and 1 <= v.shape[-1] == q.shape[-1] <= check.MAX_HEAD_DIM
    )
    chosen = backend if backend is not None else dispatch.current_backend()
    if not covered:
        if chosen == "reference":
            return reference.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, scale)
        if chosen != "auto":
            raise ValueError(
                f"backend={chosen!r} serves 4-D fp16/bf16/fp32 inputs with value head dim == query head dim "
                f"<= {check.MAX_HEAD_DIM}; got query "
                f"{tuple(q.shape)} {q.dtype}, value {tuple(v.shape)}. Use backend='auto' to fall back to torch"
            )
        # Outside the kernels' domain (or dropout, which torch draws from its own RNG): torch itself.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    mask = None if attn_mask is None else attn_mask.broadcast_to(*q.shape[:3], k.shape[2])
    seed, offset = draw_dropout_seed(dropout_p)
    args = AttentionArgs(
        scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, causal=is_causal, bottom_right=False,
        dropout_p=dropout_p, seed=seed, offset=offset, max_seqlen_q=q.shape[2], max_seqlen_k=k.shape[2],
    )
    name = _select(q, k, v, args, chosen, attn_mask=mask)
    if name == "reference" and chosen == "auto":
        # No fastattn kernel serves this call here: torch's own SDPA is the faster fallback.
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    out, _ = _core_attention(q, k, v, args, name, attn_mask=mask)
    return out


# ----------------------------------------------------------------------------- flash layout


def _flash_options(head_dim, dropout_p, softmax_scale, causal, window_size, softcap, deterministic):
    dropout_p = check.probability("dropout_p", dropout_p)
    causal = check.boolean("causal", causal)
    softmax_scale = check.optional_scale("softmax_scale", softmax_scale)
    left, right = check.window_size("window_size", window_size)
    softcap = check.softcap("softcap", softcap)
    deterministic = check.boolean("deterministic", deterministic)
    seed, offset = draw_dropout_seed(dropout_p)
    return dict(
        scale=1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale,
        causal=causal, bottom_right=True, window_left=left, window_right=0 if causal else right,
        softcap=softcap, dropout_p=dropout_p, seed=seed, offset=offset, deterministic=deterministic,
    )


def _check_qkv(q, k, v, ndim: int, layout: str):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check.tensor(name, t, ndim=ndim)
    check.same_dtype(("q", "k", "v"), q, k, v)
    check.same_device(("q", "k", "v"), q, k, v)
    check.head_dim("q", q.shape[-1], check.MAX_HEAD_DIM)
    check.head_dim("v", v.shape[-1], check.MAX_HEAD_DIM)
    check.dim_equal("k", "a head dim (last dim) of", k.shape[-1], q.shape[-1], "q")
    check.dim_equal("v", "a sequence length of", v.shape[-3], k.shape[-3], f"k, layout {layout}")
    check.dim_equal("v", "a number of heads of", v.shape[-2], k.shape[-2], f"k, layout {layout}")
    check.gqa_heads("q", q.shape[-2], "k", k.shape[-2])
    if ndim == 4:
        check.dim_equal("k", "a batch size of", k.shape[0], q.shape[0], "q")
        check.dim_equal("v", "a batch size of", v.shape[0], q.shape[0], "q")


def _slopes(alibi_slopes, batch, heads, device):
    check.alibi_slopes("alibi_slopes", alibi_slopes, batch, heads, device)
    return None if alibi_slopes is None else alibi_slopes.broadcast_to(batch, heads)


def flash_attn_func(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
    causal: bool = False, window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None, deterministic: bool = False, return_attn_probs: bool = False, *,
    learnable_sink: Optional[Tensor] = None, backend: Optional[str] = None,
):
    """Drop-in for flash-attn 2's ``flash_attn_func``.

    Args:
        q: ``(batch, seqlen_q, heads, head_dim)``; k, v: ``(batch, seqlen_k, heads_k, head_dim[_v])``
            with ``heads % heads_k == 0`` (GQA/MQA).
        dropout_p: attention-weight dropout (0.0 in eval).
        softmax_scale: default ``1 / sqrt(head_dim)``.
        causal: causal mask aligned bottom-right (query ``i`` sees keys ``j <= i + seqlen_k - seqlen_q``).
        window_size: ``(left, right)`` sliding window around ``i + seqlen_k - seqlen_q``; -1 = unbounded.
        softcap: ``softcap * tanh(scores / softcap)`` before masking; 0 = off.
        alibi_slopes: fp32 ``(heads,)`` or ``(batch, heads)``: adds ``-slope * |i + seqlen_k - seqlen_q - j|``.
        deterministic: use an atomics-free backward where the backend has one.
        return_attn_probs: also return the log-sum-exp and ``S_dmask``: ``None`` without dropout;
            with it, the probabilities ``(batch, heads, seqlen_q, seqlen_k)`` in q's dtype,
            negated where dropped (``S_dmask >= 0`` is the keep mask), as flash-attn does.
        learnable_sink: attention sinks (gpt-oss; FlashAttention-4's name): ``(heads,)`` logits,
            one per query head, that join every row's softmax denominator and carry no value.
            Differentiable.
        backend: see :func:`scaled_dot_product_attention`.

    Returns:
        ``out`` ``(batch, seqlen_q, heads, head_dim_v)``, or ``(out, softmax_lse, S_dmask)`` with
        ``softmax_lse`` fp32 ``(batch, heads, seqlen_q)`` (the sink included), ``+inf`` for rows
        that see no key (their output is 0; with a sink their LSE is the sink's logit).
    """
    _check_qkv(q, k, v, 4, "(batch, seqlen, heads, head_dim)")
    options = _flash_options(q.shape[-1], dropout_p, softmax_scale, causal, window_size, softcap, deterministic)
    return_attn_probs = check.boolean("return_attn_probs", return_attn_probs)
    backend = dispatch.check_backend_name(backend) if backend is not None else None
    slopes = _slopes(alibi_slopes, q.shape[0], q.shape[2], q.device)
    sink = check.learnable_sink("learnable_sink", learnable_sink, q.shape[2], q.device)
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    args = AttentionArgs(max_seqlen_q=q.shape[1], max_seqlen_k=k.shape[1], **options)
    q_, k_, v_ = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, D) views, no copy
    # Selection, then the op straight away: one frame from here to the kernel's launcher.
    name = _select(q_, k_, v_, args, backend, alibi_slopes=slopes)
    out, lse = _core_attention(q_, k_, v_, args, name, alibi_slopes=slopes, learnable_sink=sink)
    out = out.transpose(1, 2)
    if not return_attn_probs:
        return out
    return out, lse, _dropout_probs(q.transpose(1, 2), k.transpose(1, 2), args, slopes, sink=sink)


def flash_attn_varlen_func(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
    max_seqlen_k: int, dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
    window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0, alibi_slopes: Optional[Tensor] = None,
    deterministic: bool = False, return_attn_probs: bool = False, *, learnable_sink: Optional[Tensor] = None,
    backend: Optional[str] = None,
):
    """Drop-in for flash-attn 2's ``flash_attn_varlen_func`` (packed variable-length batches).

    Args:
        q: ``(total_q, heads, head_dim)``; k, v: ``(total_k, heads_k, head_dim[_v])``.
        cu_seqlens_q, cu_seqlens_k: int32 ``(batch + 1,)`` cumulative lengths starting at 0:
            sequence ``b`` is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``.
        max_seqlen_q, max_seqlen_k: the longest sequence of each (an upper bound is fine).
        Other options as :func:`flash_attn_func` (``learnable_sink`` included), applied per
        sequence (``alibi_slopes`` may be ``(batch, heads)``).

    Returns:
        ``out`` ``(total_q, heads, head_dim_v)``, or ``(out, softmax_lse (heads, total_q), S_dmask)``
        with ``S_dmask`` as in :func:`flash_attn_func`, ``(batch, heads, max_seqlen_q, max_seqlen_k)``.
    """
    _check_qkv(q, k, v, 3, "(total, heads, head_dim)")
    # Metadata only here; the values are checked inside the op (traceable, no GPU sync here).
    cu_q = check.cu_seqlens("cu_seqlens_q", cu_seqlens_q, max_seqlen_q, "max_seqlen_q", q.device)
    cu_k = check.cu_seqlens("cu_seqlens_k", cu_seqlens_k, max_seqlen_k, "max_seqlen_k", q.device)
    if cu_q.numel() != cu_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
                         f"{cu_q.numel() - 1} and {cu_k.numel() - 1}")
    options = _flash_options(q.shape[-1], dropout_p, softmax_scale, causal, window_size, softcap, deterministic)
    return_attn_probs = check.boolean("return_attn_probs", return_attn_probs)
    backend = dispatch.check_backend_name(backend) if backend is not None else None
    batch = cu_q.numel() - 1
    check.alibi_slopes("alibi_slopes", alibi_slopes, batch, q.shape[1], q.device)
    slopes = None if alibi_slopes is None else alibi_slopes.broadcast_to(batch, q.shape[1])
    sink = check.learnable_sink("learnable_sink", learnable_sink, q.shape[1], q.device)
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    args = AttentionArgs(max_seqlen_q=int(max_seqlen_q), max_seqlen_k=int(max_seqlen_k), **options)
    view = lambda t: t.transpose(0, 1).unsqueeze(0)  # (total, H, D) -> (1, H, total, D), no copy
    q_, k_, v_ = view(q), view(k), view(v)
    name = _select(q_, k_, v_, args, backend, alibi_slopes=slopes, cu_q=cu_q, cu_k=cu_k)
    out, lse = _core_attention(q_, k_, v_, args, name, alibi_slopes=slopes, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                               learnable_sink=sink)
    out = out.squeeze(0).transpose(0, 1)
    if not return_attn_probs:
        return out
    return out, lse.squeeze(0), _dropout_probs(view(q), view(k), args, slopes, cu_q, cu_k, sink)
