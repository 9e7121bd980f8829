"""The ``cuda`` backend's attention: the tensor-core FlashAttention-2 forward of
``csrc/cuda/attention`` behind the core op ``attention_fwd``.

CUDA tensors run on ``fastattn._cuda``; CPU tensors run the same kernel source on the host
SIMT runtime (``fastattn._cuda_sim``), which is how it is tested without a GPU.

Covered: fp16 and bf16; head dims 64, 128 and 256 (query, key and value alike); causal in
both alignments and non-causal; GQA/MQA; any sequence lengths; q/k/v by strides with a
contiguous head dim (16-byte aligned rows). Not covered (``supports`` says why and dispatch
picks another backend): attention masks, sliding windows, softcapping, ALiBi, dropout,
varlen (``cu_seqlens``), other head dims and dtypes.

The backward (``attention_bwd``) has no CUDA C++ kernel: it runs the Triton backward when
the Triton backend is available for the tensors' device (a GPU, or CPU tensors under
``TRITON_INTERPRET=1``), else the reference backward (:mod:`fastattn.backends.reference`).
Both take the forward's ``out`` and ``lse``, which this forward computes exactly as they
expect (natural-log LSE, ``+inf`` for rows that see no key).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn import dispatch
from fastattn._dtype_codes import DTYPE_CODES
from fastattn.backends import cuda as _cuda
from fastattn.ops.attention_args import empty_like_layout

_TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 128, 256)
_MAX_GRID_Y = 65535  # batch * heads is the grid's y dimension


def supports(q, k, v, *, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
             args=None) -> Optional[str]:
    """``None`` if the CUDA C++ attention forward computes this call (``(B, H, L, D)`` tensors), else why not."""
    mod = _cuda._MODULES.get("_cuda" if q.device.type == "cuda" else "_cuda_sim")
    if mod is not None and not hasattr(mod, "attention_fwd"):
        return "this build of the CUDA C++ kernels has no attention forward"
    if q.dtype not in _TENSOR_CORE_DTYPES:
        return f"the CUDA C++ attention takes float16 or bfloat16, got {str(q.dtype).replace('torch.', '')}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return "q, k and v of different dtypes"
    if q.dim() != 4:
        return "inputs that are not (batch, heads, seq, head_dim)"
    if q.shape[-1] not in HEAD_DIMS or k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        return f"head dims other than {', '.join(map(str, HEAD_DIMS))} (equal for q, k and v)"
    if attn_mask is not None:
        return "an attention mask"
    if alibi_slopes is not None:
        return "ALiBi"
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        return "varlen (cu_seqlens)"
    if args is not None:
        if args.has_window:
            return "a sliding window"
        if args.softcap != 0.0:
            return "softcapping"
        if args.dropout_p > 0.0:
            return "dropout"
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        return "query heads not a multiple of key/value heads"
    if q.shape[0] * q.shape[1] > _MAX_GRID_Y:
        return f"batch * heads over {_MAX_GRID_Y}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        # cp.async moves 16-byte chunks: rows must start on 16-byte boundaries.
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s % 8 for s in t.stride()[:3]):
            return f"{name} whose rows are not contiguous and 16-byte aligned"
    return None


def attention_fwd(q, k, v, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    """``(out (B, H, Lq, D) in q's dim order, lse (B, H, Lq) float32)`` from ``(B, H, L, D)`` q/k/v."""
    batch, heads, seqlen_q, head_dim = q.shape
    heads_k, seqlen_k = k.shape[1], k.shape[2]
    out = empty_like_layout(q, head_dim)
    lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32, device=q.device)
    _cuda._module(q.device).attention_fwd(
        DTYPE_CODES[q.dtype], q.data_ptr(), q.stride()[:3], k.data_ptr(), k.stride()[:3], v.data_ptr(),
        v.stride()[:3], out.data_ptr(), out.stride()[:3], lse.data_ptr(), batch, heads, heads_k, seqlen_q,
        seqlen_k, head_dim, float(args.scale), bool(args.causal), bool(args.bottom_right), _cuda._stream(q.device))
    return out, lse


def _backward_backend(device: torch.device) -> str:
    """The backend whose backward serves ``backend="cuda"`` calls on ``device``."""
    triton = dispatch.implementations("attention_bwd").get("triton")
    if triton is not None and dispatch.unavailable_reason("triton", device) is None:
        return "triton"
    return "reference"


def attention_bwd(dout, q, k, v, out, lse, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    """The Triton backward when Triton runs on this device and supports the call, else the reference's."""
    impls = dispatch.implementations("attention_bwd")
    name = _backward_backend(q.device)
    impl = impls[name]
    if impl.supports is not None and impl.supports(q, k, v, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                                                   cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                                   args=args) is not None:
        impl = impls["reference"]
    return impl.fn(dout, q, k, v, out, lse, attn_mask=attn_mask, alibi_slopes=alibi_slopes,
                   cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, args=args)


dispatch.register("attention_fwd", "cuda", attention_fwd, supports)
dispatch.register("attention_bwd", "cuda", attention_bwd, supports, delegated_to=_backward_backend)
