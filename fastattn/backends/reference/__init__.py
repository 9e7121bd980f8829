"""The ``reference`` backend: :mod:`fastattn.reference` behind every core op.

It runs on any device and any dtype, so it is also what ``auto`` falls back
to. Low-precision inputs are computed in float32 (as torch's math path
does on CPU) and cast back; float64 stays float64. Backward passes
use the reference's closed-form gradients. Dropout applies the keep mask of
:mod:`fastattn.philox` for ``(seed, offset)``, the same mask the Triton
kernels draw, so forward and backward (and both backends) agree.
"""
from __future__ import annotations

import torch

from fastattn import reference
from fastattn.attention_args import dropout_keep_mask, empty_like_layout


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _inputs(q, k, v, attn_mask, alibi_slopes, args, cu_seqlens_q=None, cu_seqlens_k=None):
    """The reference's view of a core-op call: tensors in the compute dtype and the dropout mask."""
    ct = _compute_dtype(q.dtype)
    drop = None
    if args.dropout_p > 0:
        drop = dropout_keep_mask(q, k, args, cu_seqlens_q, cu_seqlens_k)
    mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.to(ct)
    slopes = None if alibi_slopes is None else alibi_slopes.to(ct)
    return q.to(ct), k.to(ct), v.to(ct), mask, slopes, drop


def attention_fwd(q, k, v, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    qc, kc, vc, mask, slopes, drop = _inputs(q, k, v, attn_mask, alibi_slopes, args, cu_seqlens_q, cu_seqlens_k)
    out, lse = reference.attention(qc, kc, vc, args, attn_mask=mask, alibi_slopes=slopes,
                                   cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, dropout_mask=drop)
    result = empty_like_layout(q, v.shape[-1])  # the contract: out in q's dim order
    result.copy_(out)
    return result, lse.float()


def attention_bwd(dout, q, k, v, out, lse, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    qc, kc, vc, mask, slopes, drop = _inputs(q, k, v, attn_mask, alibi_slopes, args, cu_seqlens_q, cu_seqlens_k)
    dq, dk, dv = reference.attention_backward(
        dout.to(qc.dtype), qc, kc, vc, args, attn_mask=mask, alibi_slopes=slopes,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, dropout_mask=drop, lse=lse,
    )
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def attention_bwd_mask_grad(dout, q, k, v, out, lse, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    qc, kc, vc, mask, slopes, drop = _inputs(q, k, v, attn_mask, alibi_slopes, args, cu_seqlens_q, cu_seqlens_k)
    dq, dk, dv, dmask = reference.attention_backward(
        dout.to(qc.dtype), qc, kc, vc, args, attn_mask=mask, alibi_slopes=slopes, dropout_mask=drop,
        return_mask_grad=True, lse=lse,
    )
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dmask.to(attn_mask.dtype)


def kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, *, alibi_slopes, args):
    ct = _compute_dtype(q.dtype)
    if k_new is not None:  # the in-place append must land in the caller's tensors
        lens = cache_seqlens.tolist()
        for b in range(q.shape[0]):
            k_cache[b, lens[b] : lens[b] + k_new.shape[1]] = k_new[b]
            v_cache[b, lens[b] : lens[b] + v_new.shape[1]] = v_new[b]
    out, lse = reference.flash_attn_with_kvcache(
        q.to(ct), k_cache.to(ct), v_cache.to(ct), None, None,
        cache_seqlens=cache_seqlens + (0 if k_new is None else k_new.shape[1]),
        softmax_scale=args.scale, causal=args.causal,
        window_size=(args.window_left, args.window_right), softcap=args.softcap,
        alibi_slopes=None if alibi_slopes is None else alibi_slopes.to(ct), return_softmax_lse=True,
    )
    return out.to(q.dtype), lse.float()


def softmax_fwd(scores, mask, scale, causal):
    # fp32 math for 16-bit and fp32 scores (Megatron's), float64 for float64.
    return reference.scaled_masked_softmax(scores, mask, scale, causal,
                                           upcast=scores.dtype == torch.float64).to(scores.dtype)


def softmax_bwd(dprobs, probs, scale):
    # d(softmax)/dx = y * (dy - sum(dy * y)), times the scale applied before the softmax.
    ct = _compute_dtype(probs.dtype)
    y, dy = probs.to(ct), dprobs.to(ct)
    dx = y * (dy - (dy * y).sum(dim=-1, keepdim=True)) * scale
    return dx.to(probs.dtype)


def _computed(fn, dout, *inputs):
    """Run ``fn`` on ``inputs`` in the compute dtype and cast each result back to its input's dtype."""
    ct = _compute_dtype(dout.dtype)
    results = fn(dout.to(ct), *(t.to(ct) for t in inputs))
    return tuple(r.to(t.dtype) for r, t in zip(results, inputs))


def gated_act_fwd(gate, up, activation):
    ct = _compute_dtype(gate.dtype)
    return reference.gated_activation(gate.to(ct), up.to(ct), activation).to(gate.dtype)


def gated_act_bwd(dout, gate, up, activation):
    return _computed(lambda d, g, u: reference.gated_activation_backward(d, g, u, activation), dout, gate, up)


def bias_gelu_fwd(x, bias, approximate):
    ct = _compute_dtype(x.dtype)
    return reference.bias_gelu(x.to(ct), bias.to(ct), approximate).to(x.dtype)


def bias_gelu_bwd(dout, x, bias, approximate):
    ct = _compute_dtype(x.dtype)
    return reference.bias_gelu_backward(dout.to(ct), x.to(ct), bias.to(ct), approximate).to(x.dtype)


def feed_forward_fwd(x, w_gate, w_up, w_down, activation, residuals):
    """The gated MLP in the compute dtype; the residuals of ``fastattn.ops.ffn.RESIDUALS`` (any
    of them: the reference serves each, the oracle of every backend's own choice)."""
    ct = _compute_dtype(x.dtype)
    xc = x.to(ct)
    gate, up = xc @ w_gate.to(ct).t(), xc @ w_up.to(ct).t()
    hidden = reference.gated_activation(gate, up, activation)
    out = (hidden @ w_down.to(ct).t()).to(x.dtype)
    if residuals == "gate_up":
        return out, gate.to(x.dtype), up.to(x.dtype)
    if residuals == "hidden":
        return out, hidden.to(x.dtype), x.new_empty(0)
    return out, x.new_empty(0), x.new_empty(0)  # distinct: a custom op's outputs may not alias


def feed_forward_bwd(dout, x, w_gate, w_up, w_down, res_a, res_b, activation, residuals):
    if residuals == "gate_up":  # the saved pre-activations (rounded to x's dtype, as a kernel saves them)
        def grads(d, x_, wg, wu, wd):
            rows_x, rows_d = x_.reshape(-1, x_.shape[-1]), d.reshape(-1, d.shape[-1])
            ct = rows_x.dtype
            gate, up = res_a.to(ct).reshape(rows_x.shape[0], -1), res_b.to(ct).reshape(rows_x.shape[0], -1)
            dgate, dup = reference.gated_activation_backward(rows_d @ wd, gate, up, activation)
            dx = (dgate @ wg + dup @ wu).reshape(x_.shape)
            return dx, dgate.t() @ rows_x, dup.t() @ rows_x, rows_d.t() @ reference.gated_activation(gate, up, activation)
        return _computed(grads, dout, x, w_gate, w_up, w_down)
    # "hidden": the pre-activations recomputed from x.
    return _computed(lambda d, *ts: reference.feed_forward_backward(d, *ts, activation), dout, x, w_gate, w_up, w_down)


def available(device) -> None:
    """The reference runs on every device."""
    return None


OPS = {op: (globals()[op], None) for op in (
    "attention_fwd", "attention_bwd", "attention_bwd_mask_grad", "kvcache_fwd", "softmax_fwd", "softmax_bwd",
    "gated_act_fwd", "gated_act_bwd", "bias_gelu_fwd", "bias_gelu_bwd", "feed_forward_fwd", "feed_forward_bwd")}
"""Every core op, each with no restriction on its inputs."""
