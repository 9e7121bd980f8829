"""The ``cpu`` backend's attention: the native kernels of ``csrc/cpu/attention*.cpp``
(FlashAttention-2 scheme in C++ with OpenMP, AVX-512/AVX512-BF16 or AVX2 micro-kernels
picked at run time) behind the core ops ``attention_fwd`` / ``attention_bwd``.

Covered (``supports`` returns ``None``): CPU tensors of dtype fp32, bf16 or fp16 (fp16
computes in fp32) with any strides; head dims 1 to 256 (query and value dims may
differ); GQA/MQA; any scale; causal top-left (SDPA) or bottom-right (flash-attn);
sliding windows; softcap; ALiBi; boolean or float ``attn_mask`` given by strides
(stride 0 where broadcast); varlen via ``cu_seqlens``; dropout, with the keep mask of
:mod:`fastattn.philox` (the Triton kernels' stream, bit for bit), redrawn by the backward. bf16 inputs use AVX512-BF16 dot
products (fp32 accumulation, probabilities rounded to bf16 before ``P @ V``, as
flash-attn does) where the CPU has them; the backward pass computes in fp32.

Not covered (``supports`` says why, and ``auto`` falls back to the reference backend):
float64, head dims over 256, non-CPU tensors, CPUs without AVX2+FMA.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from fastattn import _C
from fastattn.attention_args import empty_like_layout, problem_extent

from fastattn._dtype_codes import DTYPE_CODES as _DTYPE_CODES  # csrc/common/dtype.h

MAX_HEAD_DIM = 256
_MASK_NONE, _MASK_BOOL, _MASK_FLOAT = 0, 1, 2


ISA_ENV = "FASTATTN_CPU_ISA"
"""Environment variable naming the instruction set the CPU attention kernels run with:
``avx2``, ``avx512`` or ``avx512bf16`` (at most this CPU's best; ``auto`` or unset: the
best). Read once, when fastattn is imported, so that one machine can run and benchmark
every lower code path."""
ISA_NAMES = ("avx2", "avx512", "avx512bf16")


def force_isa(name: str) -> str:
    """Run the CPU attention kernels with instruction set ``name`` (one of :data:`ISA_NAMES`,
    or ``auto``/empty for this CPU's best) and return the one now in use.

    Raises ValueError naming :data:`ISA_ENV` for an unknown name or one this CPU lacks (then
    nothing changes)."""
    key = name.strip().lower()
    if key in ("", "auto"):
        _C.cpu_attention_use_isa("auto")
    elif key not in ISA_NAMES:
        raise ValueError(f"{ISA_ENV}={name!r} is not an instruction set of the CPU kernels: "
                         f"expected one of {', '.join(ISA_NAMES)} or auto")
    elif not _C.cpu_attention_use_isa(key):  # declined: nothing changed
        now = _C.cpu_attention_isa()
        _C.cpu_attention_use_isa("auto")
        best = _C.cpu_attention_isa()
        _C.cpu_attention_use_isa(now)
        raise ValueError(f"{ISA_ENV}={name!r}: this CPU does not have it (its best is {best}; choose "
                         f"that or a lower one of {', '.join(ISA_NAMES)})")
    return _C.cpu_attention_isa()


# Probed once, at import: a plain Python value that torch.compile can read while tracing
# (Dynamo cannot trace into a pybind11 call).
_ISA = force_isa(os.environ.get(ISA_ENV, ""))


def isa() -> str:
    """The instruction set the kernels use on this CPU: ``avx512bf16``, ``avx512``, ``avx2``
    or ``none`` (then every call falls back); a lower one when :data:`ISA_ENV` forces it."""
    return _ISA


def supports(q, k, v, *, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, args=None):
    """``None`` if the native CPU attention computes this call exactly, else the reason.

    Takes the core op's arguments (``q`` ``(B, Hq, Lq, D)``, ``k`` ``(B, Hk, Lk, D)``,
    ``v`` ``(B, Hk, Lk, Dv)``, options in ``args``); shapes were validated by the public op.
    """
    if isa() == "none":
        return "this CPU has neither AVX-512 nor AVX2+FMA"
    tensors = (q, k, v)
    if any(t.device.type != "cpu" for t in tensors):
        return "the native CPU kernels take CPU tensors"
    if q.dtype not in _DTYPE_CODES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype} (the CPU kernels take one of fp32, bf16, fp16 for q, k and v)"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "the core op takes 4-D (B, H, L, D) tensors"
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return f"head dims over {MAX_HEAD_DIM}"
    if q.shape[1] % k.shape[1] != 0:
        return "query heads must be a multiple of key/value heads"
    if attn_mask is not None:
        if cu_seqlens_q is not None:
            return "attn_mask with varlen"
        if attn_mask.dtype != torch.bool and attn_mask.dtype not in _DTYPE_CODES:
            return f"attn_mask of dtype {attn_mask.dtype}"
        if attn_mask.dim() != 4 or attn_mask.device.type != "cpu":
            return "attn_mask must be a 4-D CPU tensor expanded to (B, Hq, Lq, Lk)"
    if alibi_slopes is not None and (alibi_slopes.dtype != torch.float32 or alibi_slopes.dim() not in (1, 2)):
        return "alibi_slopes must be float32 (Hq,) or (B, Hq)"
    return None


def _t(x: Optional[torch.Tensor]):
    """(data_ptr, stride_b, stride_h, stride_l, stride_d) of a 4-D tensor (3-D: last is 0)."""
    if x is None:
        return None
    s = list(x.stride()) + [0] * (4 - x.dim())
    return (x.data_ptr(), s[0], s[1], s[2], s[3])


def _spec(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args, keep: list) -> dict:
    spec = dict(
        dtype=_DTYPE_CODES[q.dtype],
        batch=q.shape[0], heads_q=q.shape[1], heads_k=k.shape[1],
        seqlen_q=q.shape[2], seqlen_k=k.shape[2], head_dim=q.shape[3], head_dim_v=v.shape[3],
        q=_t(q), k=_t(k), v=_t(v),
        scale=float(args.scale), softcap=float(args.softcap), causal=bool(args.causal),
        bottom_right=bool(args.bottom_right), window_left=int(args.window_left),
        window_right=int(args.window_right), deterministic=bool(args.deterministic),
        num_threads=torch.get_num_threads(),
    )
    if args.dropout_p > 0:
        # The counter space of the dropout stream, as every backend derives it.
        _, _, lq, lk = problem_extent(q, k, args, cu_seqlens_q, cu_seqlens_k)
        spec.update(dropout_p=float(args.dropout_p), seed=int(args.seed) & ((1 << 64) - 1),
                    rng_offset=int(args.offset), drop_lq=lq, drop_lk=lk)
    if attn_mask is not None:
        spec["mask_kind"] = _MASK_BOOL if attn_mask.dtype == torch.bool else _MASK_FLOAT
        spec["mask_dtype"] = 0 if attn_mask.dtype == torch.bool else _DTYPE_CODES[attn_mask.dtype]
        spec["mask"] = _t(attn_mask)
    if alibi_slopes is not None:
        spec["alibi"] = alibi_spec(alibi_slopes)
    if cu_seqlens_q is not None:
        cq = cu_seqlens_q.to(torch.int64).contiguous()
        ck = cu_seqlens_k.to(torch.int64).contiguous()
        keep += [cq, ck]  # alive until the kernel returns
        spec.update(cu_seqlens_q=cq.data_ptr(), cu_seqlens_k=ck.data_ptr(), num_seqs=cq.numel() - 1)
    return spec


def alibi_spec(alibi_slopes: torch.Tensor) -> tuple:
    """The spec tuple ``(ptr, stride_b, stride_h, 0, 0)`` of fp32 ALiBi slopes ``(Hq,)`` (the
    same for every sequence) or ``(B | 1, Hq)``, as the kernels index them."""
    if alibi_slopes.dim() == 1:
        return (alibi_slopes.data_ptr(), 0, alibi_slopes.stride(0), 0, 0)
    sb = alibi_slopes.stride(0) if alibi_slopes.shape[0] > 1 else 0
    return (alibi_slopes.data_ptr(), sb, alibi_slopes.stride(1), 0, 0)


def _new_output(like: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Uninitialised output laid out like ``like`` (tests replace this to poison outputs)."""
    return empty_like_layout(like, head_dim)


def _new_lse(q: torch.Tensor) -> torch.Tensor:
    return torch.empty(q.shape[:3], dtype=torch.float32)


def attention_fwd(q, k, v, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    """Core op ``attention_fwd`` on the CPU: returns ``out`` ``(B, Hq, Lq, Dv)`` laid out in
    q's dim order and ``lse`` float32 ``(B, Hq, Lq)`` (+inf for rows that see no key)."""
    keep: list = []
    spec = _spec(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args, keep)
    out = _new_output(q, v.shape[-1])
    lse = _new_lse(q)
    spec.update(out=_t(out), lse=_t(lse))
    _C.cpu_attention_fwd(spec)
    return out, lse


def attention_bwd(dout, q, k, v, out, lse, *, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args):
    """Core op ``attention_bwd`` on the CPU: ``(dq, dk, dv)`` shaped and laid out like
    ``q``, ``k``, ``v`` (dk/dv summed over each GQA group)."""
    keep: list = []
    spec = _spec(q, k, v, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k, args, keep)
    dq = _new_output(q, q.shape[-1])
    dk = _new_output(k, k.shape[-1])
    dv = _new_output(v, v.shape[-1])
    lse = lse if lse.dtype == torch.float32 else lse.float()
    spec.update(out=_t(out), lse=_t(lse), dout=_t(dout), dq=_t(dq), dk=_t(dk), dv=_t(dv))
    _C.cpu_attention_bwd(spec)
    return dq, dk, dv


OPS = {"attention_fwd": (attention_fwd, supports), "attention_bwd": (attention_bwd, supports)}
