"""The ``cuda`` backend's attention: the tensor-core FlashAttention-2 forward of
``csrc/cuda/attention`` behind the core op ``attention_fwd``.

CUDA tensors run on ``fastattn._cuda``; CPU tensors run the same kernel source on the host
SIMT runtime (``fastattn._cuda_sim``), which is how it is tested without a GPU.

Covered: fp16 and bf16; head dims that are multiples of 8 up to 256 (query, key and value
alike; the kernel runs the next of 64, 128 and 256 with the rest zero-filled); causal in both
alignments and non-causal; sliding windows (key tiles outside every row's window are skipped);
softcapping; ALiBi (float32 slopes, ``(H,)`` or ``(B, H)``); GQA/MQA; any sequence lengths; q/k/v by strides with a contiguous head dim (16-byte aligned
rows). Not covered (``supports`` says why and dispatch picks another backend): attention
masks, dropout, varlen (``cu_seqlens``), other head dims and dtypes.

The backward (``attention_bwd``) is CUDA C++ too (FlashAttention-2's scheme,
``csrc/cuda/attention/flash_bwd*.cuh``): a ``rowsum(dout * out)`` preprocess, a dK/dV kernel
over key blocks that recomputes P and dS from the forward's LSE (dK/dV of a GQA group summed
in the kernel), and dQ either accumulated with fp32 atomics or, with ``deterministic=True``,
by a separate pass with no atomics. It covers every call the forward covers (the kernels run
at head dim 64, 128 or 256 with the rest zero-filled; at 256 the tiles follow the device's
shared memory). A call it declines (:func:`backward_unsupported` names why: a build of the
kernels without the backward) runs the Triton backward when Triton runs on the tensors'
device, else the reference backward; both take the forward's ``out`` and ``lse`` as this
forward computes them (natural-log LSE, ``+inf`` for rows that see no key).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn import dispatch
from fastattn._dtype_codes import DTYPE_CODES
from fastattn.backends.cuda import kernels as _cuda
from fastattn.attention_args import empty_like_layout

_TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
_MAX_GRID_YZ = 65535  # heads and batch are the grid's y and z dimensions
_MAX_SEQLEN = 2**29  # the kernel's 32-bit row arithmetic (csrc/cuda/attention/attention.cu)


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
    d = q.shape[-1]
    if d % 8 or not 0 < d <= MAX_HEAD_DIM or k.shape[-1] != d or v.shape[-1] != d:
        return f"head dims that are not multiples of 8 up to {MAX_HEAD_DIM} (equal for q, k and v)"
    if attn_mask is not None:
        return "an attention mask"
    if alibi_slopes is not None:
        shapes = ((q.shape[1],), (q.shape[0], q.shape[1]))
        if (alibi_slopes.dtype != torch.float32 or tuple(alibi_slopes.shape) not in shapes
                or alibi_slopes.stride(-1) != 1 or alibi_slopes.device != q.device):
            return "ALiBi slopes that are not float32 (heads,) or (batch, heads) on q's device"
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        return "varlen (cu_seqlens)"
    if args is not None:
        if args.dropout_p > 0.0:
            return "dropout"
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        return "query heads not a multiple of key/value heads"
    if max(q.shape[2], k.shape[2]) > _MAX_SEQLEN:
        return f"sequences longer than {_MAX_SEQLEN}"
    if q.shape[0] > _MAX_GRID_YZ or q.shape[1] > _MAX_GRID_YZ:
        return f"batch or heads over {_MAX_GRID_YZ}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        # cp.async moves 16-byte chunks: rows must start on 16-byte boundaries.
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s % 8 for s in t.stride()[:3]):
            return f"{name} whose rows are not contiguous and 16-byte aligned"
    return None


def _window_bound(bound: int, seqlen_q: int, seqlen_k: int) -> int:
    """A window bound for the kernel's 32-bit arithmetic: -1 (none) stays; a bound of
    ``max(Lq, Lk)`` already reaches every key from every row (whichever the alignment), so
    larger ones are clamped to it."""
    return -1 if bound < 0 else min(int(bound), max(int(seqlen_q), int(seqlen_k)))


def _tensor(t: torch.Tensor) -> tuple[int, int, int, int]:
    """A ``(B, H, L, D)`` tensor as the bindings take it: ``(data_ptr, stride_b, stride_h, stride_l)``."""
    return (t.data_ptr(), *t.stride()[:3])


def _forward_spec(q, k, v, out, lse, alibi_slopes, args) -> dict:
    """The forward's parameter dict (csrc/cuda/attention/attention.h's AttnFwdParams by name);
    the backward's extends it."""
    batch, heads, seqlen_q, head_dim = q.shape
    heads_k, seqlen_k = k.shape[1], k.shape[2]
    return dict(
        dtype=DTYPE_CODES[q.dtype], q=_tensor(q), k=_tensor(k), v=_tensor(v), out=_tensor(out), lse=lse.data_ptr(),
        batch=batch, heads=heads, heads_k=heads_k, seqlen_q=seqlen_q, seqlen_k=seqlen_k, head_dim=head_dim,
        scale=float(args.scale), causal=bool(args.causal), bottom_right=bool(args.bottom_right),
        window_left=_window_bound(args.window_left, seqlen_q, seqlen_k),
        window_right=_window_bound(args.window_right, seqlen_q, seqlen_k), softcap=float(args.softcap),
        alibi_slopes=None if alibi_slopes is None else alibi_slopes.data_ptr(),
        alibi_batch_stride=0 if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes.stride(0),
        stream=_cuda._stream(q.device))


def attention_fwd(q, k, v, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    """``(out (B, H, Lq, D) in q's dim order, lse (B, H, Lq) float32)`` from ``(B, H, L, D)`` q/k/v."""
    batch, heads, seqlen_q, head_dim = q.shape
    heads_k, seqlen_k = k.shape[1], k.shape[2]
    out = empty_like_layout(q, head_dim)
    lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32, device=q.device)
    _cuda._module(q.device).attention_fwd(_forward_spec(q, k, v, out, lse, alibi_slopes, args))
    return out, lse


def backward_unsupported(q) -> Optional[str]:
    """``None`` if the CUDA C++ backward computes the gradients of a call :func:`supports`
    accepted (every head dim the forward takes), else why it hands them to another backend's
    backward (:func:`attention_bwd`)."""
    mod = _cuda._MODULES.get("_cuda" if q.device.type == "cuda" else "_cuda_sim")
    if mod is not None and not hasattr(mod, "attention_bwd"):
        return "this build of the CUDA C++ kernels has no attention backward"
    return None


def _fallback_backend(device: torch.device) -> str:
    """The backend whose backward serves the calls :func:`backward_unsupported` declines."""
    triton = dispatch.implementations("attention_bwd").get("triton")
    if triton is not None and dispatch.unavailable_reason("triton", device) is None:
        return "triton"
    return "reference"


def _rows_16b(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a contiguous copy when its rows are not 16-byte aligned (cp.async reads them)."""
    if t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and not any(s % 8 for s in t.stride()[:3]):
        return t
    return t.contiguous()




def attention_bwd(dout, q, k, v, out, lse, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    """``(dq, dk, dv)`` shaped and laid out like ``q``, ``k``, ``v`` (``(B, H, L, D)``), from the
    forward's ``out`` and ``lse``; GQA/MQA dk/dv summed over each key/value head's query heads.
    Calls :func:`backward_unsupported` declines run another backend's backward."""
    extras = dict(attn_mask=attn_mask, alibi_slopes=alibi_slopes, cu_seqlens_q=cu_seqlens_q,
                  cu_seqlens_k=cu_seqlens_k, args=args)
    if backward_unsupported(q) is not None:
        by = backward_runs_on(q.device, q, k, v, **extras)
        return dispatch.implementations("attention_bwd")[by].fn(dout, q, k, v, out, lse, **extras)
    dout = _rows_16b(dout.to(q.dtype))
    lse = lse.to(torch.float32).contiguous()
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    mod = _cuda._module(q.device)
    spec = _forward_spec(q, k, v, out, lse, alibi_slopes, args)
    spec.update(dout=_tensor(dout), dq=_tensor(dq), dk=_tensor(dk), dv=_tensor(dv),
                deterministic=bool(args.deterministic))
    # Scratch of the kernels (lse in log2 units, rowsum(dout * out), the fp32 dq accumulator):
    # every element is written by the preprocess before it is read.
    workspace = torch.empty(mod.attention_bwd_workspace_floats(spec), dtype=torch.float32, device=q.device)
    spec["workspace"] = workspace.data_ptr()
    mod.attention_bwd(spec)
    return dq, dk, dv


def backward_runs_on(device: torch.device, q=None, *inputs, **kwargs) -> str:
    """The backend whose kernel computes :func:`attention_bwd` for a call with these forward
    inputs (``dispatch.runs_on``): ``"cuda"``, or the fallback for a call
    :func:`backward_unsupported` declines. Without inputs: ``"cuda"``, the kernel of every call
    it does not decline."""
    if q is None or backward_unsupported(q) is None:
        return "cuda"
    fallback = _fallback_backend(device)
    supported = dispatch.implementations("attention_bwd")[fallback].supports
    if supported is not None and supported(q, *inputs, **kwargs) is not None:
        return "reference"
    return fallback


OPS = {"attention_fwd": (attention_fwd, supports), "attention_bwd": (attention_bwd, supports, backward_runs_on)}
