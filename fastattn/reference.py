"""Pure-PyTorch reference implementations of every fastattn op: the test oracle.

Each function computes in the dtype of its inputs, or in float64 with
``upcast=True`` (then it returns float64 tensors). They favour clarity over
speed: scores are materialised, masks are built explicitly. Every kernel test,
``fastattn verify`` and the benchmarks compare against these.

Conventions (identical to the public API):

* SDPA layout ``(batch, heads, seq, head_dim)``; flash layout
  ``(batch, seq, heads, head_dim)``; varlen packs ``(total, heads, head_dim)``.
* SDPA boolean masks: True = takes part. Float masks are added to the scores.
  ``is_causal`` is aligned top-left. A fully masked row gives 0 (as torch does).
* flash-attn: causal and windows aligned bottom-right; a row that sees no key
  gives 0 and an LSE of ``+inf``.
* ``scaled_masked_softmax`` follows Megatron-LM's ``FusedScaleMaskSoftmax``:
  boolean mask True = masked out.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from fastattn.attention_args import AttentionArgs

__all__ = [
    "attention",
    "attention_backward",
    "attention_probabilities",
    "scaled_dot_product_attention",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "apply_rotary",
    "scaled_masked_softmax",
    "swiglu",
    "geglu",
    "bias_gelu",
    "feed_forward",
    "gelu",
    "activation_grad",
    "gated_activation",
    "gated_activation_backward",
    "bias_gelu_backward",
    "feed_forward_backward",
]


def _cast(upcast: bool, *tensors):
    if not upcast:
        return tensors
    return tuple(None if t is None else (t.double() if t.is_floating_point() else t) for t in tensors)


# --------------------------------------------------------------------------- attention core


def visibility_mask(
    seqlen_q: int, seqlen_k: int, args: AttentionArgs, device: torch.device
) -> Optional[torch.Tensor]:
    """Boolean ``(seqlen_q, seqlen_k)`` mask (True = visible) from ``args``'
    causal flag and window, or ``None`` when every key is visible."""
    wl, wr = args.window_left, args.window_right
    if args.causal:
        wr = 0
    if wl < 0 and wr < 0:
        return None
    off = seqlen_k - seqlen_q if args.bottom_right else 0
    i = torch.arange(seqlen_q, device=device).unsqueeze(1) + off
    j = torch.arange(seqlen_k, device=device).unsqueeze(0)
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if wr >= 0:
        visible &= j <= i + wr
    if wl >= 0:
        visible &= j >= i - wl
    return visible


def _probabilities(q, k, args, attn_mask, alibi_slopes, sink=None):
    """Softmax probabilities of one dense attention problem.

    ``q`` ``(B,H,Lq,D)``, ``k`` ``(B,H,Lk,D)`` (GQA already expanded), in the compute dtype.
    Returns ``(probs, lse, capped)``: ``probs`` ``(B,H,Lq,Lk)`` (rows that see no key are 0),
    ``lse`` ``(B,H,Lq)`` (``+inf`` for those rows), and ``tanh(scores / softcap)`` when
    softcapping (for the backward), else ``None``. ``sink`` ``(H,)``: one more logit per head
    in every row's softmax, with no value (its probability is left out of ``probs``; ``lse``
    includes it, so a row that sees no key has ``lse = sink``).
    """
    heads, seqlen_q, seqlen_k = q.shape[1], q.shape[2], k.shape[2]
    scores = torch.matmul(q, k.transpose(-2, -1)) * args.scale
    capped = None
    if args.softcap > 0:
        capped = torch.tanh(scores / args.softcap)
        scores = args.softcap * capped
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(scores.dtype).reshape(-1, heads, 1, 1)
        i = torch.arange(seqlen_q, device=q.device).unsqueeze(1) + (seqlen_k - seqlen_q)
        j = torch.arange(seqlen_k, device=q.device).unsqueeze(0)
        scores = scores - slopes * (i - j).abs().to(scores.dtype)
    visible = torch.ones_like(scores, dtype=torch.bool)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            visible = visible & attn_mask
        else:
            scores = scores + attn_mask.to(scores.dtype)
    window = visibility_mask(seqlen_q, seqlen_k, args, q.device)
    if window is not None:
        visible = visible & window
    scores = scores.masked_fill(~visible, float("-inf"))
    if sink is not None:  # the sink is one more (always visible) column, dropped after the softmax
        column = sink.to(scores.dtype).reshape(1, heads, 1, 1).expand(*scores.shape[:-1], 1)
        extended = torch.cat((scores, column), dim=-1)
        lse = torch.logsumexp(extended, dim=-1)
        return torch.exp(extended - lse.unsqueeze(-1))[..., :-1], lse, capped
    if seqlen_k == 0:  # no key at all (e.g. an empty KV cache): every row sees no key
        probs = scores.new_zeros(scores.shape)
        return probs, scores.new_full(scores.shape[:-1], float("inf")), capped
    # A row with no finite score sees no key: its output is 0 and its LSE +inf (flash-attn's rule;
    # torch's SDPA also gives 0 there). Replace -inf maxima by 0 so exp() stays finite.
    row_max = scores.amax(dim=-1, keepdim=True)
    empty = ~torch.isfinite(row_max) & (row_max < 0)
    row_max = torch.where(empty, torch.zeros_like(row_max), row_max)
    probs = torch.exp(scores - row_max)
    row_sum = probs.sum(dim=-1, keepdim=True)
    lse = (row_max + torch.log(row_sum)).squeeze(-1)
    lse = torch.where(empty.squeeze(-1), torch.full_like(lse, float("inf")), lse)
    probs = torch.where(empty, torch.zeros_like(probs), probs / row_sum)
    return probs, lse, capped


def _expand_kv(q, k, v):
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def _sum_groups(grad, heads_k):
    """Sum a ``(B, H, L, D)`` gradient over the query heads sharing each of ``heads_k`` kv heads."""
    batch, heads, length, dim = grad.shape
    return grad.reshape(batch, heads_k, heads // heads_k, length, dim).sum(2)


def _sequence_mask(dropout_mask, s, cq, ck):
    """Sequence ``s``'s slice of a varlen dropout mask ``(n, H, max_Lq, max_Lk)``."""
    if dropout_mask is None:
        return None
    return dropout_mask[s : s + 1, :, : cq[s + 1] - cq[s], : ck[s + 1] - ck[s]]


def _attention_dense(q, k, v, args, attn_mask, alibi_slopes, dropout_mask, sink=None):
    """(B,H,Lq,D) x (B,Hk,Lk,D) -> out (B,H,Lq,Dv), lse (B,H,Lq); inputs already in the compute dtype."""
    k, v = _expand_kv(q, k, v)
    probs, lse, _ = _probabilities(q, k, args, attn_mask, alibi_slopes, sink)
    if dropout_mask is not None:
        probs = probs * dropout_mask.to(probs.dtype) / (1.0 - args.dropout_p)
    return torch.matmul(probs, v), lse


def _attention_dense_backward(dout, q, k, v, args, attn_mask, alibi_slopes, dropout_mask, mask_grad=False,
                              lse=None):
    """Closed-form gradients of :func:`_attention_dense` with respect to q, k, v (and, with
    ``mask_grad``, the additive mask as broadcast to ``(B, H, Lq, Lk)``). ``lse`` (optional):
    the forward's LSE, by which the probabilities are normalised (``P = exp(s - lse)``, as the
    FlashAttention backward does), e.g. one that includes attention sinks."""
    heads_k = k.shape[1]
    k, v = _expand_kv(q, k, v)
    probs, plain_lse, capped = _probabilities(q, k, args, attn_mask, alibi_slopes)
    if lse is not None:
        both = torch.isfinite(plain_lse) & torch.isfinite(lse)
        probs = probs * torch.where(both, torch.exp(plain_lse - lse.to(probs.dtype)), 1.0).unsqueeze(-1)
    kept = probs
    dprobs = torch.matmul(dout, v.transpose(-2, -1))
    if dropout_mask is not None:
        keep = dropout_mask.to(probs.dtype) / (1.0 - args.dropout_p)
        kept = probs * keep
        dprobs = dprobs * keep
    dv = torch.matmul(kept.transpose(-2, -1), dout)
    # softmax backward: dS = P * (dP - rowsum(dP * P)); masked entries have P = 0, so dS = 0 there.
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True))
    dmask = dscores  # the additive mask enters after the scale and the softcap
    if capped is not None:  # d/dx [c * tanh(x / c)] = 1 - tanh^2
        dscores = dscores * (1 - capped * capped)
    dscores = dscores * args.scale
    dq = torch.matmul(dscores, k)
    dk = torch.matmul(dscores.transpose(-2, -1), q)
    grads = (dq, _sum_groups(dk, heads_k), _sum_groups(dv, heads_k))
    return grads + (dmask,) if mask_grad else grads


def attention_probabilities(
    q: torch.Tensor, k: torch.Tensor, args: AttentionArgs, *, attn_mask: Optional[torch.Tensor] = None,
    alibi_slopes: Optional[torch.Tensor] = None, cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None, max_seqlen_q: int = 0, max_seqlen_k: int = 0,
    learnable_sink: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The softmax probabilities (before dropout) of :func:`attention`'s call, in q's dtype.

    ``(B, Hq, Lq, Lk)``; varlen: ``(n, Hq, max_seqlen_q, max_seqlen_k)`` (0 = the longest
    sequence), sequence ``s`` in ``[s, :, :Lq_s, :Lk_s]`` and zeros elsewhere. Rows that see
    no key are 0.
    """
    sink = None if learnable_sink is None else learnable_sink.to(q.dtype)
    if cu_seqlens_q is None:
        k, _ = _expand_kv(q, k, k)
        return _probabilities(q, k, args, attn_mask, alibi_slopes, sink)[0]
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    lengths_q = [b - a for a, b in zip(cq, cq[1:])]
    lengths_k = [b - a for a, b in zip(ck, ck[1:])]
    probs = q.new_zeros(len(lengths_q), q.shape[1], max_seqlen_q or max(lengths_q), max_seqlen_k or max(lengths_k))
    for s, (lq, lk) in enumerate(zip(lengths_q, lengths_k)):
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[s : s + 1]
        ks, _ = _expand_kv(q, k[:, :, ck[s] : ck[s + 1]], k[:, :, ck[s] : ck[s + 1]])
        probs[s : s + 1, :, :lq, :lk] = _probabilities(q[:, :, cq[s] : cq[s + 1]], ks, args, None, slopes, sink)[0]
    return probs


def attention_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttentionArgs, *,
    attn_mask: Optional[torch.Tensor] = None, alibi_slopes: Optional[torch.Tensor] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None, cu_seqlens_k: Optional[torch.Tensor] = None,
    dropout_mask: Optional[torch.Tensor] = None, upcast: bool = False, return_mask_grad: bool = False,
    lse: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, ...]:
    """Gradients ``(dq, dk, dv)`` of :func:`attention`'s output for the cotangent ``dout``
    ``(B, Hq, Lq, Dv)``, in closed form (the FlashAttention backward equations, on
    materialised probabilities). Arguments as :func:`attention`; GQA gradients are summed
    over each kv head's query heads. ``return_mask_grad`` (a float ``attn_mask``, not
    varlen): also the mask's gradient ``(B, Hq, Lq, Lk)``, as broadcast. ``lse`` ``(B, Hq, Lq)``:
    the forward's LSE when it is not the scores' own (attention sinks add to it)."""
    dout, q, k, v, attn_mask, alibi_slopes = _cast(upcast, dout, q, k, v, attn_mask, alibi_slopes)
    if return_mask_grad and (cu_seqlens_q is not None or attn_mask is None or attn_mask.dtype == torch.bool):
        raise ValueError("return_mask_grad needs a float attn_mask and no cu_seqlens")
    if cu_seqlens_q is None:
        return _attention_dense_backward(dout, q, k, v, args, attn_mask, alibi_slopes, dropout_mask,
                                         return_mask_grad, lse)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(cq) - 1):
        sq, sk = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[s : s + 1]
        g = _attention_dense_backward(dout[:, :, sq], q[:, :, sq], k[:, :, sk], v[:, :, sk], args, None, slopes,
                                      _sequence_mask(dropout_mask, s, cq, ck),
                                      lse=None if lse is None else lse[:, :, sq])
        dq[:, :, sq], dk[:, :, sk], dv[:, :, sk] = g
    return dq, dk, dv


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: AttentionArgs,
    *,
    attn_mask: Optional[torch.Tensor] = None,
    alibi_slopes: Optional[torch.Tensor] = None,
    cu_seqlens_q: Optional[torch.Tensor] = None,
    cu_seqlens_k: Optional[torch.Tensor] = None,
    dropout_mask: Optional[torch.Tensor] = None,
    upcast: bool = False,
    learnable_sink: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The core attention every backend implements, in SDPA layout.

    Args:
        q: ``(B, Hq, Lq, D)``; k: ``(B, Hk, Lk, D)``; v: ``(B, Hk, Lk, Dv)``, ``Hq % Hk == 0``.
            With ``cu_seqlens_q``/``cu_seqlens_k`` (int, ``(n + 1,)``): ``B == 1`` and the
            sequence dim packs ``n`` sequences; each is attended independently.
        args: scale, causal/window (aligned by ``args.bottom_right``), softcap, dropout_p;
            see :class:`fastattn.attention_args.AttentionArgs`.
        attn_mask: bool (True = takes part) or float (added), broadcastable to
            ``(B, Hq, Lq, Lk)``; not with varlen.
        alibi_slopes: ``(Hq,)`` or ``(B, Hq)``; adds ``-slope * |i + Lk - Lq - j|``.
        dropout_mask: bool ``(B, Hq, Lq, Lk)`` of kept probabilities (the reference draws
            none itself: :mod:`fastattn.philox` gives the one kernels draw). Varlen:
            ``(n, Hq, max_Lq, max_Lk)``, sequence ``s`` using ``[s, :, :Lq_s, :Lk_s]``.
        upcast: compute in float64 and return float64.
        learnable_sink: ``(Hq,)`` attention-sink logits (gpt-oss): one more logit per head in
            every row's softmax denominator, carrying no value. Differentiable.

    Returns:
        ``(out, lse)``: ``out`` ``(B, Hq, Lq, Dv)``; ``lse`` ``(B, Hq, Lq)`` float32 (float64
        with ``upcast``), the natural-log sum of exp of the final scores (and of the sink);
        ``+inf`` and an output of 0 for rows that see no key (with a sink: ``lse = sink``).
    """
    q, k, v, attn_mask, alibi_slopes = _cast(upcast, q, k, v, attn_mask, alibi_slopes)
    sink = None if learnable_sink is None else (learnable_sink.double() if upcast else learnable_sink.float())
    if cu_seqlens_q is None:
        out, lse = _attention_dense(q, k, v, args, attn_mask, alibi_slopes, dropout_mask, sink)
    else:
        if attn_mask is not None:
            raise ValueError("attn_mask is not defined for varlen attention")
        outs, lses = [], []
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        for s in range(len(cq) - 1):
            slopes = alibi_slopes
            if slopes is not None and slopes.dim() == 2:
                slopes = slopes[s : s + 1]
            o, l = _attention_dense(
                q[:, :, cq[s] : cq[s + 1]], k[:, :, ck[s] : ck[s + 1]], v[:, :, ck[s] : ck[s + 1]],
                args, None, slopes, _sequence_mask(dropout_mask, s, cq, ck), sink,
            )
            outs.append(o)
            lses.append(l)
        out = torch.cat(outs, dim=2)
        lse = torch.cat(lses, dim=2)
    # The LSE is float32 (as kernels give it) unless the computation itself is float64.
    return out, (lse if lse.dtype == torch.float64 else lse.float())


# --------------------------------------------------------------------------- SDPA API


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
    enable_gqa=False, *, dropout_mask=None, upcast=False,
):
    """``torch.nn.functional.scaled_dot_product_attention`` semantics, in plain PyTorch.

    ``query`` ``(..., L, E)``, ``key`` ``(..., S, E)``, ``value`` ``(..., S, Ev)`` with any
    number of leading dims (heads of key/value may divide query's with ``enable_gqa``);
    bool masks True = takes part, float masks added; ``is_causal`` top-left; fully
    masked rows give 0. Dropout needs an explicit ``dropout_mask`` (bool, kept = True).
    Returns ``(..., L, Ev)``.
    """
    if attn_mask is not None and is_causal:
        raise ValueError("attn_mask and is_causal=True cannot be given together")
    lead = query.shape[:-2]
    if query.dim() == 3:
        q, k, v = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    elif query.dim() == 2:
        q, k, v = query[None, None], key[None, None], value[None, None]
    else:
        q = query.reshape(-1, *query.shape[-3:])
        k = key.reshape(-1, *key.shape[-3:])
        v = value.reshape(-1, *value.shape[-3:])
    mask = attn_mask
    if mask is not None:
        mask = torch.broadcast_to(mask, (*lead, query.shape[-2], key.shape[-2])).reshape(
            q.shape[0], q.shape[1], query.shape[-2], key.shape[-2]
        )
    if dropout_mask is not None:
        dropout_mask = dropout_mask.reshape(q.shape[0], q.shape[1], query.shape[-2], key.shape[-2])
    args = AttentionArgs(
        scale=1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale),
        causal=is_causal, bottom_right=False, dropout_p=dropout_p,
    )
    out, _ = attention(q, k, v, args, attn_mask=mask, dropout_mask=dropout_mask, upcast=upcast)
    return out.reshape(*lead, query.shape[-2], value.shape[-1])


# --------------------------------------------------------------------------- flash-attn API


def _flash_args(q, k, softmax_scale, causal, window_size, softcap, dropout_p, max_q=0, max_k=0):
    return AttentionArgs(
        scale=1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else float(softmax_scale),
        causal=causal, bottom_right=True,
        window_left=int(window_size[0]), window_right=int(window_size[1]),
        softcap=float(softcap), dropout_p=float(dropout_p), max_seqlen_q=max_q, max_seqlen_k=max_k,
    )


def flash_attn_func(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
    alibi_slopes=None, deterministic=False, return_attn_probs=False, *, dropout_mask=None, upcast=False,
    learnable_sink=None,
):
    """flash-attn 2 ``flash_attn_func`` semantics: ``q`` ``(B, Lq, Hq, D)``, ``k``/``v``
    ``(B, Lk, Hk, D)``; causal/window aligned bottom-right. Returns ``out`` ``(B, Lq, Hq, Dv)``,
    or ``(out, softmax_lse (B, Hq, Lq), None)`` with ``return_attn_probs``."""
    args = _flash_args(q, k, softmax_scale, causal, window_size, softcap, dropout_p)
    out, lse = attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), args,
        alibi_slopes=alibi_slopes, dropout_mask=dropout_mask, upcast=upcast, learnable_sink=learnable_sink,
    )
    out = out.transpose(1, 2)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
    deterministic=False, return_attn_probs=False, *, dropout_mask=None, upcast=False, learnable_sink=None,
):
    """flash-attn 2 ``flash_attn_varlen_func``: packed ``q`` ``(total_q, Hq, D)``, ``k``/``v``
    ``(total_k, Hk, D)``, sequence ``s`` spanning ``cu_seqlens[s]:cu_seqlens[s+1]``; dropout
    needs ``dropout_mask`` ``(n, Hq, max_seqlen_q, max_seqlen_k)`` (see :func:`attention`).
    Returns ``out`` ``(total_q, Hq, Dv)`` or ``(out, softmax_lse (Hq, total_q), None)``."""
    if dropout_p > 0 and dropout_mask is None:
        raise ValueError("the reference draws no dropout mask: pass dropout_mask (see fastattn.philox)")
    args = _flash_args(q, k, softmax_scale, causal, window_size, softcap, dropout_p, max_seqlen_q, max_seqlen_k)
    out, lse = attention(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        args, alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        dropout_mask=dropout_mask, upcast=upcast, learnable_sink=learnable_sink,
    )
    out = out.squeeze(0).transpose(0, 1)
    return (out, lse.squeeze(0), None) if return_attn_probs else out


def apply_rotary(x, cos, sin, positions, interleaved=True):
    """Rotary embedding of ``x`` ``(..., D)`` at integer ``positions`` (broadcast against
    ``x.shape[:-1]``), flash-attn's convention: ``cos``/``sin`` ``(max_position, R / 2)`` rotate
    the first ``R <= D`` dims; ``interleaved`` pairs dims ``(0, 1), (2, 3), ...``, otherwise
    ``(i, i + R / 2)`` (GPT-NeoX). Pairs ``(x1, x2)`` become ``(x1 cos - x2 sin, x1 sin + x2 cos)``."""
    rot = 2 * cos.shape[-1]
    c = cos[positions].to(x.dtype)
    s = sin[positions].to(x.dtype)
    head, tail = x[..., :rot], x[..., rot:]
    if interleaved:
        x1, x2 = head[..., 0::2], head[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = head[..., : rot // 2], head[..., rot // 2 :]
        out = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((out, tail), dim=-1)


def flash_attn_with_kvcache(
    q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, softmax_scale=None, causal=False,
    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, return_softmax_lse=False, *,
    rotary_cos=None, rotary_sin=None, rotary_interleaved=True, cache_batch_idx=None, cache_leftpad=None,
    block_table=None, upcast=False, learnable_sink=None,
):
    """flash-attn 2 ``flash_attn_with_kvcache``, one batch element at a time.

    ``q`` ``(B, Lq, Hq, D)``; caches ``(B_cache, Lcache, Hk, D)``, or with ``block_table``
    (int32 ``(B, max_blocks)``) pages ``(num_blocks, page_size, Hk, D)`` where logical
    position ``p`` of sequence ``b`` lives at ``[block_table[b, p // page_size], p % page_size]``.
    Sequence ``b`` uses cache row ``cache_batch_idx[b]`` (default ``b``). If ``k``/``v``
    ``(B, Lnew, Hk, D)`` are given they are first written into the caches *in place* at
    positions ``cache_seqlens[b] .. cache_seqlens[b] + Lnew`` (after rotary, if given). Then
    sequence ``b`` attends to the keys at positions ``cache_leftpad[b]`` (default 0) up to
    ``cache_seqlens[b] + Lnew``, causal/window aligned bottom-right on that range
    (``cache_seqlens`` int or int32 ``(B,)``; ``None`` means the whole cache).

    Rotary (``rotary_cos``/``rotary_sin`` ``(max_position, R / 2)``, see :func:`apply_rotary`):
    new key ``t`` is rotated at position ``cache_seqlens[b] + t``; query row ``i`` at
    ``cache_seqlens[b] + i`` when causal or windowed, else every row at ``cache_seqlens[b]``.
    Returns ``out`` ``(B, Lq, Hq, Dv)``, and ``softmax_lse`` ``(B, Hq, Lq)`` if asked.
    """
    batch = q.shape[0]
    paged = block_table is not None
    capacity = block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[1]
    new = 0 if k is None else k.shape[1]
    if cache_seqlens is None:
        lens = [capacity - new] * batch
    elif isinstance(cache_seqlens, int):
        lens = [cache_seqlens] * batch
    else:
        lens = [int(x) for x in cache_seqlens.tolist()]
    starts = [0] * batch if cache_leftpad is None else [int(x) for x in cache_leftpad.tolist()]
    rows = list(range(batch)) if cache_batch_idx is None else [int(x) for x in cache_batch_idx.tolist()]

    def where(b, p):  # (cache row or block, offset) of logical position p of sequence b
        if paged:
            return int(block_table[b, p // k_cache.shape[1]]), p % k_cache.shape[1]
        return rows[b], p

    local = causal or window_size[0] >= 0 or window_size[1] >= 0
    if rotary_cos is not None:
        q = torch.stack([apply_rotary(q[b], rotary_cos, rotary_sin,
                                      torch.tensor([lens[b] + (i if local else 0) for i in range(q.shape[1])])[:, None],
                                      rotary_interleaved) for b in range(batch)])
        k = torch.stack([apply_rotary(k[b], rotary_cos, rotary_sin, torch.tensor([lens[b] + t for t in range(new)])[:, None],
                                      rotary_interleaved) for b in range(batch)])
    for b in range(batch):
        for t in range(new):
            c, p = where(b, lens[b] + t)
            k_cache[c, p] = k[b, t]
            v_cache[c, p] = v[b, t]
    args = _flash_args(q, k_cache, softmax_scale, causal, window_size, softcap, 0.0)
    outs, lses = [], []
    for b in range(batch):
        positions = [where(b, p) for p in range(starts[b], lens[b] + new)]
        keys = torch.stack([k_cache[c, p] for c, p in positions]) if positions else k_cache[0, :0]
        values = torch.stack([v_cache[c, p] for c, p in positions]) if positions else v_cache[0, :0]
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[b : b + 1]
        o, l = attention(q[b : b + 1].transpose(1, 2), keys[None].transpose(1, 2), values[None].transpose(1, 2),
                         args, alibi_slopes=slopes, upcast=upcast, learnable_sink=learnable_sink)
        outs.append(o.transpose(1, 2))
        lses.append(l)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_softmax_lse else out


# --------------------------------------------------------------------------- softmax


def scaled_masked_softmax(scores, mask=None, scale=1.0, causal=False, *, upcast=False):
    """Megatron-LM ``FusedScaleMaskSoftmax`` semantics: ``softmax(scale * scores, masked)``
    over the last dim, computed in fp32 (float64 with ``upcast``), returned in the input dtype.

    ``scores`` ``(..., Lq, Lk)``; ``mask`` broadcastable to it: bool (True = masked out, as
    Megatron) or float (added after scaling); ``causal`` masks ``j > i`` (top-left).
    Rows with every position masked give 0.
    """
    dtype = scores.dtype
    x = scores.double() if upcast else scores.float()
    x = x * scale
    masked = None
    if mask is not None:
        if mask.dtype == torch.bool:
            masked = torch.broadcast_to(mask, x.shape)
        else:
            x = x + mask.to(x.dtype)
    if causal:
        lq, lk = x.shape[-2], x.shape[-1]
        upper = torch.ones(lq, lk, dtype=torch.bool, device=x.device).triu(1)
        masked = upper if masked is None else masked | upper
    if masked is not None:
        x = x.masked_fill(masked, float("-inf"))
    row_max = x.amax(dim=-1, keepdim=True)
    empty = torch.isneginf(row_max)
    e = torch.exp(x - torch.where(empty, torch.zeros_like(row_max), row_max))
    probs = torch.where(empty, torch.zeros_like(e), e / e.sum(dim=-1, keepdim=True))
    return probs if upcast else probs.to(dtype)


# --------------------------------------------------------------------------- feed-forward


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``torch.nn.functional.gelu`` (erf or tanh), in the dtype of ``x``."""
    return F.gelu(x, approximate=approximate)


def swiglu(gate, up, *, upcast=False):
    """``silu(gate) * up`` elementwise; ``gate`` and ``up`` of one shape ``(..., hidden)``."""
    gate, up = _cast(upcast, gate, up)
    return F.silu(gate) * up


def geglu(gate, up, approximate="none", *, upcast=False):
    """``gelu(gate, approximate) * up`` elementwise (erf by default, or ``"tanh"``)."""
    gate, up = _cast(upcast, gate, up)
    return F.gelu(gate, approximate=approximate) * up


def bias_gelu(x, bias, approximate="none", *, upcast=False):
    """``gelu(x + bias, approximate)``; ``bias`` ``(hidden,)`` broadcast over ``x``'s leading dims."""
    x, bias = _cast(upcast, x, bias)
    return F.gelu(x + bias, approximate=approximate)


_GATED = {"swiglu": ("silu", None), "geglu": ("gelu", "none"), "geglu_tanh": ("gelu", "tanh")}


def gated_activation(gate, up, activation: str, *, upcast=False):
    """The gated activation named ``activation`` ("swiglu", "geglu", "geglu_tanh")."""
    if activation == "swiglu":
        return swiglu(gate, up, upcast=upcast)
    return geglu(gate, up, _GATED[activation][1], upcast=upcast)


def activation_grad(x: torch.Tensor, name: str) -> torch.Tensor:
    """Derivative of the activation ``name`` ("silu", "gelu" (erf), "gelu_tanh") at ``x``."""
    if name == "silu":
        sig = torch.sigmoid(x)
        return sig * (1 + x * (1 - sig))
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return cdf + x * pdf
    if name == "gelu_tanh":
        k = math.sqrt(2 / math.pi)
        t = torch.tanh(k * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
    raise ValueError(f"unknown activation {name!r}")


_GATE_FN = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}


def gated_activation_backward(dout, gate, up, activation: str, *, upcast=False):
    """``(dgate, dup)`` of :func:`gated_activation` for the cotangent ``dout``, in closed form."""
    dout, gate, up = _cast(upcast, dout, gate, up)
    act = gated_activation(gate, torch.ones_like(up), activation)
    return dout * up * activation_grad(gate, _GATE_FN[activation]), dout * act


def bias_gelu_backward(dout, x, bias, approximate="none", *, upcast=False):
    """``d/dx gelu(x + bias)`` times ``dout`` (the bias gradient is its sum over leading dims)."""
    dout, x, bias = _cast(upcast, dout, x, bias)
    return dout * activation_grad(x + bias, "gelu" if approximate == "none" else "gelu_tanh")


def feed_forward_backward(dout, x, w_gate, w_up, w_down, activation="swiglu", *, upcast=False):
    """``(dx, dw_gate, dw_up, dw_down)`` of :func:`feed_forward` in closed form, recomputing
    the pre-activations from ``x``. ``dout`` ``(..., dim_out)``."""
    dout, x, w_gate, w_up, w_down = _cast(upcast, dout, x, w_gate, w_up, w_down)
    rows_x, rows_dout = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
    gate, up = rows_x @ w_gate.t(), rows_x @ w_up.t()
    hidden = gated_activation(gate, up, activation)
    dhidden = rows_dout @ w_down
    dgate, dup = gated_activation_backward(dhidden, gate, up, activation)
    dx = (dgate @ w_gate + dup @ w_up).reshape(x.shape)
    return dx, dgate.t() @ rows_x, dup.t() @ rows_x, rows_dout.t() @ hidden


def feed_forward(x, w_gate_up, w_down, activation="swiglu", *, upcast=False):
    """The gated MLP ``down(act(x @ w_gate.T) * (x @ w_up.T))``.

    ``x`` ``(..., dim)``; ``w_gate_up`` ``(2 * hidden, dim)`` with the gate rows first, or a
    pair ``(w_gate, w_up)`` of ``(hidden, dim)``; ``w_down`` ``(dim_out, hidden)``.
    Returns ``(..., dim_out)``.
    """
    if isinstance(w_gate_up, (tuple, list)):
        w_gate, w_up = w_gate_up
    else:
        w_gate, w_up = w_gate_up.chunk(2, dim=0)
    x, w_gate, w_up, w_down = _cast(upcast, x, w_gate, w_up, w_down)
    hidden = gated_activation(x @ w_gate.t(), x @ w_up.t(), activation)
    return hidden @ w_down.t()


def split_gate_up(w_gate_up) -> Sequence[torch.Tensor]:
    """``(w_gate, w_up)`` views of a ``(2*hidden, dim)`` tensor, or the pair itself."""
    if isinstance(w_gate_up, (tuple, list)):
        return tuple(w_gate_up)
    return w_gate_up.chunk(2, dim=0)
