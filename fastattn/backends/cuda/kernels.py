"""The ``cuda`` backend: the CUDA C++ kernels of ``csrc/cuda``.

CUDA tensors run on ``fastattn._cuda`` (the nvcc build); CPU tensors run on
``fastattn._cuda_sim``, the same sources compiled for the host SIMT runtime
(``csrc/sim``; docs/architecture.md), so that every CUDA kernel can be tested
and verified without a GPU. Both modules expose identical functions, each taking one
parameter dict (``csrc/bindings/spec.h``): tensors as ``(data_ptr, *strides)`` in
elements, a dtype code (``csrc/common/dtype.h``), sizes by name and a stream handle.

This module only adapts tensors to those calls (views, strides, output allocation);
inputs were validated by the public op. Ops served: ``gated_act_fwd/bwd``,
``bias_gelu_fwd/bwd``, ``softmax_fwd/bwd`` and ``kvcache_fwd``.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from fastattn._dtype_codes import ACTIVATION_CODES as _ACTIVATION_CODES
from fastattn._dtype_codes import DTYPE_CODES as _DTYPE_CODES
_MASK_KINDS = {torch.bool: 1, torch.float32: 2, torch.float16: 3, torch.bfloat16: 4}  # SoftmaxMask
_SOFTMAX_MAX_ROW = 16384
_MAX_HEAD_DIM = 256

_MODULES: dict[str, object] = {}
_IMPORT_ERRORS: dict[str, str] = {}
for _name in ("_cuda", "_cuda_sim"):
    try:
        _MODULES[_name] = importlib.import_module(f"fastattn.{_name}")
    except ImportError as exc:
        _IMPORT_ERRORS[_name] = f"{type(exc).__name__}: {exc}"


def available(device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        if "_cuda" not in _MODULES:
            return f"fastattn._cuda was not built ({_IMPORT_ERRORS.get('_cuda', 'unknown')})"
        return None if torch.cuda.is_available() else "no CUDA device"
    if device.type == "cpu":
        if "_cuda_sim" not in _MODULES:
            return f"fastattn._cuda_sim was not built ({_IMPORT_ERRORS.get('_cuda_sim', 'unknown')})"
        return None
    return f"the CUDA C++ kernels do not run on {device.type} tensors"


def _module(device: torch.device):
    return _MODULES["_cuda" if device.type == "cuda" else "_cuda_sim"]


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _spec_rows(t: torch.Tensor) -> tuple[int, int]:
    """A ``(rows, cols)`` view as a binding takes it: ``(data_ptr, row stride)``."""
    return t.data_ptr(), t.stride(0)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as ``(rows, cols)`` with unit column stride, copying only when no such view exists."""
    cols = t.shape[-1] if t.dim() else 1
    if t.dim() and t.stride(-1) != 1 and cols > 1:
        t = t.contiguous()
    try:
        return t.view(-1, cols)
    except RuntimeError:
        return t.contiguous().view(-1, cols)


def _supports_dtypes(*args) -> Optional[str]:
    for t in args:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype not in _DTYPE_CODES:
            return f"the CUDA C++ kernels take float16, bfloat16 or float32, got {str(t.dtype).replace('torch.', '')}"
    return None


# ---------------------------------------------------------------- fused activations


def gated_act_fwd(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(gate) * up`` for gate/up ``(..., hidden)``; a new contiguous tensor."""
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    g, u, o = _rows(gate), _rows(up), out.view(-1, out.shape[-1] if out.dim() else 1)
    _module(gate.device).gated_act_fwd(dict(
        dtype=_DTYPE_CODES[gate.dtype], activation=_ACTIVATION_CODES[activation], gate=_spec_rows(g),
        up=_spec_rows(u), out=_spec_rows(o), rows=g.shape[0], cols=g.shape[1], stream=_stream(gate.device)))
    return out


def gated_act_bwd(dout, gate, up, activation):
    """``(dgate, dup)`` of :func:`gated_act_fwd`, each a new contiguous tensor."""
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    d, g, u = _rows(dout), _rows(gate), _rows(up)
    dg, du = _rows(dgate), _rows(dup)
    _module(gate.device).gated_act_bwd(dict(
        dtype=_DTYPE_CODES[gate.dtype], activation=_ACTIVATION_CODES[activation], dout=_spec_rows(d),
        gate=_spec_rows(g), up=_spec_rows(u), dgate=_spec_rows(dg), dup=_spec_rows(du), rows=g.shape[0],
        cols=g.shape[1], stream=_stream(gate.device)))
    return dgate, dup


def bias_gelu_fwd(x, bias, approximate):
    """``gelu(x + bias)`` for x ``(..., hidden)``, bias ``(hidden,)``."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    xr, o, b = _rows(x), _rows(out), bias.contiguous()
    _module(x.device).bias_gelu_fwd(dict(
        dtype=_DTYPE_CODES[x.dtype], approximate_tanh=approximate == "tanh", x=_spec_rows(xr), bias=b.data_ptr(),
        out=_spec_rows(o), rows=xr.shape[0], cols=xr.shape[1], stream=_stream(x.device)))
    return out


def bias_gelu_bwd(dout, x, bias, approximate):
    """``dout * gelu'(x + bias)``; the op sums it over the leading dims for the bias gradient."""
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    d, xr, o, b = _rows(dout), _rows(x), _rows(dx), bias.contiguous()
    _module(x.device).bias_gelu_bwd(dict(
        dtype=_DTYPE_CODES[x.dtype], approximate_tanh=approximate == "tanh", dout=_spec_rows(d), x=_spec_rows(xr),
        bias=b.data_ptr(), dx=_spec_rows(o), rows=xr.shape[0], cols=xr.shape[1], stream=_stream(x.device)))
    return dx


# ---------------------------------------------------------------- scale-mask-softmax


def _as4d(t: torch.Tensor, *, copy_ok: bool = True) -> Optional[torch.Tensor]:
    """``t`` ``(..., Lq, Lk)`` as a 4-D ``(B, H, Lq, Lk)`` view; leading dims beyond two are
    merged (a copy when they cannot be, or ``None`` if ``copy_ok`` is False)."""
    if t.dim() < 4:
        return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if t.dim() == 4:
        return t
    shape = (-1, t.shape[-3], t.shape[-2], t.shape[-1])
    try:
        return t.view(shape)
    except RuntimeError:
        return t.reshape(shape) if copy_ok else None


def _spec4(t: torch.Tensor) -> tuple[int, ...]:
    """A 4-D tensor as a binding takes it: ``(data_ptr, stride_b, stride_h, stride_q, stride_k)``."""
    return (t.data_ptr(), *t.stride())


def _sizes4(t: torch.Tensor) -> dict[str, int]:
    return dict(batch=t.shape[0], heads=t.shape[1], seqlen_q=t.shape[2], seqlen_k=t.shape[3])


def softmax_fwd(scores, mask, scale, causal):
    """Megatron ``FusedScaleMaskSoftmax``: see :func:`fastattn.reference.scaled_masked_softmax`."""
    out = torch.empty_like(scores)
    x, y = _as4d(scores), _as4d(out, copy_ok=False)
    target = out if y is not None else torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)
    y = _as4d(target)
    spec = dict(dtype=_DTYPE_CODES[scores.dtype], x=_spec4(x), y=_spec4(y), scale=float(scale), causal=bool(causal),
                stream=_stream(scores.device), **_sizes4(x))
    if mask is not None:
        m = _as4d(torch.broadcast_to(mask, scores.shape))
        spec.update(mask=_spec4(m), mask_kind=_MASK_KINDS[m.dtype])
    _module(scores.device).scaled_masked_softmax_fwd(spec)
    if target is not out:
        out.copy_(target)
    return out


def softmax_bwd(dprobs, probs, scale):
    """``scale * y * (dy - sum(dy * y))`` over the last dim."""
    dx = torch.empty_like(probs)
    d, y, o = _as4d(dprobs), _as4d(probs), _as4d(dx, copy_ok=False)
    target = dx if o is not None else torch.empty(probs.shape, dtype=probs.dtype, device=probs.device)
    o = _as4d(target)
    _module(probs.device).scaled_masked_softmax_bwd(dict(
        dtype=_DTYPE_CODES[probs.dtype], dy=_spec4(d), y=_spec4(y), dx=_spec4(o), scale=float(scale),
        stream=_stream(probs.device), **_sizes4(y)))
    if target is not dx:
        dx.copy_(target)
    return dx


def _softmax_supports(scores, mask=None, scale=1.0, causal=False) -> Optional[str]:
    why = _supports_dtypes(scores)
    if why is not None:
        return why
    if scores.shape[-1] > _SOFTMAX_MAX_ROW:
        return f"rows longer than {_SOFTMAX_MAX_ROW} (got {scores.shape[-1]})"
    if mask is not None and mask.dtype not in _MASK_KINDS:
        return f"a mask of dtype {mask.dtype}"
    return None


# ---------------------------------------------------------------- split-KV decoding


def _spec3(t: Optional[torch.Tensor]) -> Optional[tuple[int, ...]]:
    """A ``(b, s, h, d)`` tensor as a binding takes it: ``(data_ptr, stride_b, stride_s, stride_h)``."""
    return None if t is None else (t.data_ptr(), *t.stride()[:3])


def kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, *, alibi_slopes, args):
    """``flash_attn_with_kvcache`` (see csrc/cuda/decode/decode.h): appends ``k_new``/``v_new``
    into the caches in place, then decodes. Returns ``(out (B, Lq, Hq, Dv), lse (B, Hq, Lq))``."""
    batch, seqlen_q, heads, head_dim = q.shape
    heads_k, head_dim_v = k_cache.shape[2], v_cache.shape[3]
    seqlen_new = 0 if k_new is None else k_new.shape[1]
    # The cache length bounds every cache_seqlens[b] + seqlen_new (validated), without a device sync.
    max_seqlen_k = k_cache.shape[1]
    mod = _module(q.device)
    splits = mod.split_kv_num_splits(batch, seqlen_q, heads, max_seqlen_k)
    out = torch.empty(batch, seqlen_q, heads, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32, device=q.device)
    o_part = torch.empty(splits, batch * seqlen_q * heads, head_dim_v, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(splits, batch * seqlen_q * heads, dtype=torch.float32, device=q.device)
    lens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    slopes, slope_stride = None, 0
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(torch.float32).reshape(-1, heads)
        if slopes.stride(1) != 1:
            slopes = slopes.contiguous()
        slope_stride = slopes.stride(0) if slopes.shape[0] > 1 else 0
    window_right = 0 if args.causal else args.window_right
    mod.split_kv_decode(dict(
        dtype=_DTYPE_CODES[q.dtype], q=_spec3(q), k_cache=_spec3(k_cache), v_cache=_spec3(v_cache),
        k_new=_spec3(k_new), v_new=_spec3(v_new), cache_seqlens=lens.data_ptr(),
        alibi_slopes=None if slopes is None else slopes.data_ptr(), alibi_batch_stride=slope_stride,
        out=out.data_ptr(), lse=lse.data_ptr(), o_partial=o_part.data_ptr(), lse_partial=lse_part.data_ptr(),
        batch=batch, seqlen_q=seqlen_q, heads=heads, heads_k=heads_k, head_dim=head_dim, head_dim_v=head_dim_v,
        seqlen_new=seqlen_new, max_seqlen_k=max_seqlen_k, num_splits=splits, scale=float(args.scale),
        softcap=float(args.softcap), causal=bool(args.causal), window_left=int(args.window_left),
        window_right=int(window_right), stream=_stream(q.device)))
    return out, lse


def _kvcache_supports(q, k_cache, v_cache, k_new=None, v_new=None, cache_seqlens=None, *, alibi_slopes=None,
                      args=None) -> Optional[str]:
    why = _supports_dtypes(q, k_cache, v_cache, k_new, v_new)
    if why is not None:
        return why
    if max(q.shape[-1], v_cache.shape[-1]) > _MAX_HEAD_DIM:
        return f"head dims over {_MAX_HEAD_DIM}"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k_new), ("v", v_new)):
        if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
            return f"{name} with a non-contiguous last dim"
    if args is not None and (args.dropout_p > 0 or not args.bottom_right):
        return "dropout or top-left alignment in KV-cache decoding"
    return None


OPS = {
    "gated_act_fwd": (gated_act_fwd, _supports_dtypes),
    "gated_act_bwd": (gated_act_bwd, _supports_dtypes),
    "bias_gelu_fwd": (bias_gelu_fwd, _supports_dtypes),
    "bias_gelu_bwd": (bias_gelu_bwd, _supports_dtypes),
    "softmax_fwd": (softmax_fwd, _softmax_supports),
    "softmax_bwd": (softmax_bwd, _softmax_supports),
    "kvcache_fwd": (kvcache_fwd, _kvcache_supports),
}
