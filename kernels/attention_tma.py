"""The attention forward for Hopper (sm_90): K/V (and Q/O) moved by the Tensor Memory Accelerator.

Same math, arguments and results as :func:`fastattn.kernels.attention.attention_fwd` (see that
module's docstring), same online softmax, same score helper (``_scores``: softcap, ALiBi, masks,
windows, both causal alignments), same dropout stream. What differs is how tiles reach shared
memory and how the key loop is laid out:

* **TMA.** Q, K, V and O are read and written through host-built tensor descriptors
  (:class:`triton.tools.tensor_descriptor.TensorDescriptor`, 4-D over the ``(B, H, L, D)`` view,
  any strides the hardware takes). One ``cp.async.bulk.tensor`` per tile replaces the per-thread
  address and bound arithmetic of pointer loads, which is most of the non-MMA instructions of
  the pointer kernel's main loop besides the softmax. The hardware zero-fills rows past ``L``
  and columns past ``D`` of a tile on load and drops them on store, per ``(b, h)`` (a 4-D box
  never reads the next head's rows), so no load or store needs a predicate.
* **Three loops, not one branch.** The key blocks before the interior (a window's left edge), the
  interior (every key visible from every row: no compare, no select, the scale-and-subtract
  FMA fold) and the blocks after it (the causal diagonal, the ragged end) run as three loops, so
  the interior loop holds no control flow and is software-pipelined on its own. (The pointer
  kernel keeps one loop with a uniform branch because there each loop keeps its own pipelined
  pointer loads live; TMA loads keep their state in shared memory and barriers.)

Served: fp16 and bf16 at head dims up to 128, fp32 (tf32x3) up to 64 (a power-of-two tile, the
columns past ``D`` zero-filled by the hardware); wider ones run the pointer kernel, because
there every candidate tile spills with features (16-bit at 256, fp32 at 128: ptxas reports for
sm_90a) and at most 16x32 survives without. GQA/MQA, causal in both alignments, sliding windows, softcap,
ALiBi, bool and additive masks, dropout. Not served (the pointer kernel runs them):
varlen (a descriptor spans whole ``(b, h)`` rows; packed sequences would need one per
sequence), and tensors whose strides or base address TMA cannot take
(:func:`tma_compatible`). :func:`fastattn.kernels.attention.attention_fwd` sends a call here on
compute capability 9.x (:func:`uses_tma`), or when asked (``path="tma"``: the tests run it so
under the interpreter); its cases for the ahead-of-time compile are in that module's
``aot_cases`` (sm_90 only).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._configs import select_compiled
from .attention_shared import (INTERPRET, SMEM_LIMIT, _TUNE_KEY, _arch, _compile_report, _dropout_keep,
                               _forward_result, _head_operands, _key_ranges, _row_block_id, _score_scale,
                               _softmax_step, kernel_configs)

__all__ = ["launch_fwd_tma", "tma_compatible", "unsupported_reason", "uses_tma", "TMA_MIN_ARCH", "TMA_MAX_HEAD_DIM"]

TMA_MIN_ARCH = 90
"""Compute capability from which the forward runs through this module (TMA is sm_90+)."""

TMA_MAX_HEAD_DIM = {2: 128, 4: 64}
"""The widest head dim sent here, by element size in bytes (see the module docstring: wider
tiles spill)."""


def tma_compatible(*tensors: torch.Tensor) -> bool:
    """Whether TMA can address each ``(B, H, L, D)`` tensor as it is laid out: unit stride on the
    last dim, every other stride and the base address a multiple of 16 bytes (the
    descriptor's rules), no broadcast (zero-stride) dim, and at most 2**31 - 1 elements along
    each dim."""
    for t in tensors:
        elem = t.element_size()
        if t.dim() != 4 or t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        if any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)):
            return False
        if any((s * elem) % 16 for s in t.stride()[:-1]) or any(n >= 2 ** 31 for n in t.shape):
            return False
    return True


def unsupported_reason(q, k, v, out, *, varlen: bool):
    """``None`` if this kernel can compute the call (``out`` the output buffer), else why not."""
    if varlen:
        return "varlen (a descriptor spans whole (b, h) rows)"
    widest = TMA_MAX_HEAD_DIM.get(q.element_size(), 0)
    if q.shape[-1] > widest:
        return f"head dim {q.shape[-1]} > {widest} in {q.dtype} (its tiles spill)"
    if not tma_compatible(q, k, v, out):
        return "q, k, v and out need unit stride on the head dim and 16-byte aligned strides and base addresses"
    return None


def uses_tma(q, k, v, out, *, arch: int, on_gpu: bool, varlen: bool) -> bool:
    """Whether :func:`fastattn.kernels.attention.attention_fwd` runs this kernel by default: on a
    GPU of compute capability ``arch >= TMA_MIN_ARCH`` whenever :func:`unsupported_reason` has
    nothing against the call. Elsewhere the pointer kernel."""
    return on_gpu and arch >= TMA_MIN_ARCH and unsupported_reason(q, k, v, out, varlen=varlen) is None


def _descriptor(t: torch.Tensor) -> TensorDescriptor:
    # The block shape is a placeholder until the autotuner's pre-hook sets the chosen tile.
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, 16, 16])


def _set_block_shapes(nargs: dict, block_m: int, block_n: int) -> None:
    bd = nargs["BLOCK_D"]
    nargs["desc_q"].block_shape = [1, 1, block_m, bd]
    nargs["desc_o"].block_shape = [1, 1, block_m, bd]
    nargs["desc_k"].block_shape = [1, 1, block_n, bd]
    nargs["desc_v"].block_shape = [1, 1, block_n, bd]


def _pre_hook(nargs: dict) -> None:
    """Autotuner pre-hook: give the descriptors the tile of the config about to run."""
    _set_block_shapes(nargs, nargs["BLOCK_M"], nargs["BLOCK_N"])


def _configs() -> list:
    return [
        triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]}, num_warps=c["num_warps"],
                      num_stages=c["num_stages"], maxnreg=c.get("maxnreg"), pre_hook=_pre_hook)
        for c in kernel_configs("fwd")
    ]


def _prune(configs, nargs, **kwargs):
    """Keep the configs the compiler reports within shared memory and free of spills, each
    compiled for its own tile shapes (the descriptors' block shapes are part of the signature)."""
    if INTERPRET or len(configs) == 1:
        return configs
    reports = []
    for cfg in configs:
        _set_block_shapes(dict(nargs, **kwargs), cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"])
        reports.append(_compile_report(_attn_fwd_tma.fn, cfg, nargs, kwargs))
    return select_compiled(configs, reports, SMEM_LIMIT.get(_arch(), 227 * 1024))


@triton.jit
def _tma_block(acc, l_i, m_i, q, desc_k, desc_v, off_b, off_hk, start_n, rows, offs_n, seqlen_q, seqlen_k, off,
               window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn, dropout_p, seed,
               rng_offset, off_h, num_heads, max_q, max_k,
               EDGE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
               ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One key block of the online softmax (``EDGE``: compare every element; else interior)."""
    cols = start_n + offs_n
    k = desc_k.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D])
    qk = tl.dot(q, k.T, input_precision=DOT_PRECISION)
    p, alpha, l_i, m_new = _softmax_step(qk, m_i, l_i, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right,
                                         qk_scale, cap, slope, mask_base, stride_mm, stride_mn, EDGE, CAUSAL, WINDOW,
                                         SOFTCAP, ALIBI, MASK_MODE)
    if DROPOUT:
        # int64 coordinates: the counter passes 2**31 on large problems.
        keep = _dropout_keep(seed, rng_offset, dropout_p, off_b.to(tl.int64), off_h.to(tl.int64), num_heads, max_q,
                             max_k, rows, cols)
        p = tl.where(keep, p, 0.0)
    v = desc_v.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D])
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.autotune(configs=_configs(), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_fwd_tma(
    desc_q, desc_k, desc_v, desc_o, LSE, Alibi, Mask,
    stride_lb, stride_lh, stride_lm,
    stride_ab, stride_ah,
    stride_mb, stride_mh, stride_mm, stride_mn,
    seqlen_q, seqlen_k, kv_group, sm_scale, softcap, window_left, window_right,
    dropout_p, seed, rng_offset, num_heads, seq_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tl.static_assert(not VARLEN, "varlen runs the pointer kernel")
    pid_m = _row_block_id(CAUSAL)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    off_hk = off_h // kv_group  # GQA: query head h reads kv head h // group, no repeated K/V
    start_m = pid_m * BLOCK_M
    off = 0
    if BOTTOM_RIGHT:
        off = seqlen_k - seqlen_q
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    rows = start_m + offs_m

    # Q stays the tile TMA wrote to shared memory, where the wgmma reads it: negating it here (for
    # a negative scale) would move it into registers and serialise every Q K^T wgmma on register
    # copies of its operand. The launcher passes a positive scale instead (launch_fwd_tma).
    q = desc_q.load([off_b, off_h, start_m, 0]).reshape([BLOCK_M, BLOCK_D])
    qk_scale, cap = _score_scale(sm_scale, softcap, SOFTCAP)
    slope, mask_base = _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI,
                                      MASK_MODE)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    max_q, max_k = seqlen_q, seqlen_k
    lo, hi, full_lo, full_hi = _key_ranges(start_m, seqlen_k, off, window_left, window_right, BLOCK_M, BLOCK_N,
                                           CAUSAL, WINDOW)
    # Edge blocks before the interior (a window's left edge), the interior, then the edge blocks
    # after it (the causal diagonal, a window's right edge, the ragged end). When the interior
    # is empty (full_hi <= full_lo), the first and last loops cover [lo, hi) between them.
    for start_n in tl.range(lo, tl.minimum(full_lo, hi), BLOCK_N):
        acc, l_i, m_i = _tma_block(acc, l_i, m_i, q, desc_k, desc_v, off_b, off_hk, start_n, rows, offs_n, seqlen_q,
                                   seqlen_k, off, window_left, window_right, qk_scale, cap, slope, mask_base,
                                   stride_mm, stride_mn, dropout_p, seed, rng_offset, off_h, num_heads, max_q, max_k,
                                   True, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, BLOCK_N,
                                   BLOCK_D)
    for start_n in tl.range(full_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = _tma_block(acc, l_i, m_i, q, desc_k, desc_v, off_b, off_hk, start_n, rows, offs_n, seqlen_q,
                                   seqlen_k, off, window_left, window_right, qk_scale, cap, slope, mask_base,
                                   stride_mm, stride_mn, dropout_p, seed, rng_offset, off_h, num_heads, max_q, max_k,
                                   False, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, BLOCK_N,
                                   BLOCK_D)
    for start_n in tl.range(tl.maximum(full_lo, full_hi), hi, BLOCK_N):
        acc, l_i, m_i = _tma_block(acc, l_i, m_i, q, desc_k, desc_v, off_b, off_hk, start_n, rows, offs_n, seqlen_q,
                                   seqlen_k, off, window_left, window_right, qk_scale, cap, slope, mask_base,
                                   stride_mm, stride_mn, dropout_p, seed, rng_offset, off_h, num_heads, max_q, max_k,
                                   True, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, BLOCK_N,
                                   BLOCK_D)

    acc, lse = _forward_result(acc, l_i, m_i, dropout_p, DROPOUT)
    # Rows past seqlen_q and columns past HEAD_DIM fall outside the descriptor: not written.
    desc_o.store([off_b, off_h, start_m, 0], acc.to(desc_o.dtype).reshape([1, 1, BLOCK_M, BLOCK_D]))
    l_base = LSE + off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
    tl.store(l_base + rows * stride_lm, lse, mask=rows < seqlen_q)


def launch_fwd_tma(q, k, v, out, lse, ptrs, extra_strides, scalars, flags) -> None:
    """Launch the TMA forward into ``out``/``lse`` with the arguments
    :func:`fastattn.kernels.attention._common` derived (not varlen; every tensor
    :func:`tma_compatible`)."""
    _cu_q, _cu_k, alibi, mask = ptrs
    heads, batch, lq = q.shape[1], q.shape[0], q.shape[2]
    if scalars[3] < 0:
        # The kernel assumes a positive scale (its interior loop folds the scale and the max
        # subtraction into one FMA): q.k * scale == (-q).k * |scale| exactly.
        # The copy keeps q's strides, so its descriptor's rules hold as q's do.
        q = torch.neg(q, out=torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device=q.device))
        scalars = scalars[:3] + (-scalars[3],) + scalars[4:]
    grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), heads, batch)
    _attn_fwd_tma[grid](
        _descriptor(q), _descriptor(k), _descriptor(v), _descriptor(out), lse, alibi, mask,
        *lse.stride(), *extra_strides, *scalars,
        # Head-dim chunking is for fp32 above 128, which this kernel does not serve.
        **{name: value for name, value in flags.items() if name not in ("D_CHUNK", "BLOCK_DV")},
    )
