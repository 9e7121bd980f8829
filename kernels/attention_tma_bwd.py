"""The attention backward for Hopper (sm_90): dK/dV and dQ with their tiles moved by TMA.

Same math, arguments and results as the pointer backward of :mod:`.attention` (see that
module's docstring: ``P = exp2(s - lse2)`` recomputed from the forward's LSE, ``dS = P * (dP -
delta)``, dK/dV summed over the GQA group in registers, dQ by fp32 atomics from the dK/dV
program or by its own deterministic pass), the same score helper (softcap, ALiBi, masks,
windows, both causal alignments), the same dropout stream and mask gradient. What differs:

* **TMA.** Q, dO (the dK/dV kernel's streamed operands), K, V (the dQ kernel's), the resident
  tiles and the results are moved by host-built 4-D tensor descriptors over the ``(B, H, L, D)``
  views, as in :mod:`.attention_tma`: the hardware zero-fills rows past ``L`` and columns past
  ``D`` per ``(b, h)`` and clips stores, so no load or store of a tile needs a predicate.
  Atomic dQ is one bulk reduction a tile (``cp.reduce.async.bulk.tensor``, fp32 add) instead
  of one atomic an element.
* **Transposed dK/dV tiles.** The dK/dV kernel computes ``S^T = K Q^T`` (keys x rows), so that
  ``P^T`` and ``dS^T`` come out of one wgmma in the layout the next one takes as its
  register operand (``dV += P^T dO``, ``dK += dS^T Q``): no transpose of a score tile through
  shared memory (the Triton tutorial's backward does the same). The row statistics (LSE,
  delta) then broadcast along the tile's second axis.
* **Three loops, not one branch**, in both kernels: the blocks before the interior (dK/dV: the
  causal diagonal; dQ: a window's left edge), the interior (every key visible from every row,
  no ragged row or key: no compare, no select, no predicated load, ``P`` one FMA and one exp2
  a score without features), and the blocks after it (the ragged end, a window's other edge).

Served: what :mod:`.attention_tma` serves (tensors TMA can address, not varlen) in fp16 and
bf16 at head dims up to 64 (:data:`TMA_BWD_MAX_HEAD_DIM`), with every feature of the pointer
backward (GQA/MQA, causal both alignments, windows, softcap, ALiBi, bool and additive masks
with their row statistics, dropout, the mask gradient, atomic and deterministic dQ). The rest runs the pointer
kernels: :func:`fastattn.kernels.attention.attention_bwd` sends a call here on compute
capability 9.x when :func:`unsupported_reason` has nothing against it, or when asked
(``path="tma"``: the tests run it so under the interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._configs import select_compiled
from .attention_shared import (INTERPRET, LOG2E, SMEM_LIMIT, _TUNE_KEY, _arch, _compile_report, _dropout_keep_at,
                               _head_operands, _key_ranges, _lse_rows, _probs_at, _query_ranges, _row_block_id,
                               _score_scale, kernel_configs)
from .attention_tma import TMA_MIN_ARCH, _descriptor, tma_compatible
from .attention_tma import unsupported_reason as _forward_unsupported_reason

__all__ = ["launch_bwd_tma", "unsupported_reason", "uses_tma", "TMA_BWD_MAX_HEAD_DIM"]


TMA_BWD_MAX_HEAD_DIM = {2: 64}
"""The widest head dim sent here, by element size in bytes (16-bit only). The register file
decides, by ptxas's reports for sm_90a: at head dim 128 every dK/dV candidate spills with
atomic dQ (the default) and with any feature (412-9128 bytes: the fp32 dK and dV accumulators of
a 64-key tile alone are 128 registers a thread; only the featureless deterministic launch keeps
32x64 and 16x64), and in fp32 (tf32x3 keeps two copies of each operand) every one spills
from head dim 32 on (172-20268 bytes), so the pointer kernels run those."""


def unsupported_reason(q, k, v, out, dout, *, varlen: bool):
    """``None`` if these kernels can compute the backward of the call (``out``/``dout`` the
    forward's output and its gradient), else why not: the forward TMA kernel's rule, head dims
    up to :data:`TMA_BWD_MAX_HEAD_DIM`, and ``dout`` must be addressable by TMA too (dQ, dK and
    dV are allocated like q, k, v)."""
    why = _forward_unsupported_reason(q, k, v, out, varlen=varlen)
    widest = TMA_BWD_MAX_HEAD_DIM.get(q.element_size())
    if why is None and widest is None:
        why = f"{q.dtype} (every dK/dV tile spills; 16-bit only)"
    elif why is None and q.shape[-1] > widest:
        why = f"head dim {q.shape[-1]} > {widest} (every dK/dV tile spills)"
    if why is None and not tma_compatible(dout):
        why = "dout needs unit stride on the head dim and 16-byte aligned strides and base address"
    return why


def uses_tma(q, k, v, out, dout, *, arch: int, on_gpu: bool, varlen: bool) -> bool:
    """Whether :func:`fastattn.kernels.attention.attention_bwd` runs these kernels by default: on
    a GPU of compute capability ``arch >= 90`` whenever :func:`unsupported_reason` has nothing
    against the call. Elsewhere the pointer kernels."""
    return on_gpu and arch >= TMA_MIN_ARCH and unsupported_reason(q, k, v, out, dout, varlen=varlen) is None


# The descriptors of each kernel and whose tile (rows or keys) sets their block's length.
_ROW_DESCS = {"bwd_dkdv_tma": ("desc_q", "desc_do", "desc_dq"), "bwd_dq_tma": ("desc_q", "desc_do", "desc_dq")}
_KEY_DESCS = {"bwd_dkdv_tma": ("desc_k", "desc_v", "desc_dk", "desc_dv"), "bwd_dq_tma": ("desc_k", "desc_v")}


def _set_block_shapes(kernel: str, nargs: dict, block_m: int, block_n: int) -> None:
    bd = nargs["BLOCK_D"]
    for name in _ROW_DESCS[kernel]:
        nargs[name].block_shape = [1, 1, block_m, bd]
    for name in _KEY_DESCS[kernel]:
        nargs[name].block_shape = [1, 1, block_n, bd]


def _configs(kernel: str) -> list:
    def pre_hook(nargs):  # give the descriptors the tile of the config about to run
        _set_block_shapes(kernel, nargs, nargs["BLOCK_M"], nargs["BLOCK_N"])

    return [
        triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]}, num_warps=c["num_warps"],
                      num_stages=c["num_stages"], maxnreg=c.get("maxnreg"), pre_hook=pre_hook)
        for c in kernel_configs(kernel)
    ]


def _prune(kernel: str):
    """Keep the configs the compiler reports within shared memory and free of spills, each
    compiled for its own tile shapes (the descriptors' block shapes are part of the signature)."""
    def prune(configs, nargs, **kwargs):
        if INTERPRET or len(configs) == 1:
            return configs
        jit_fn = _JIT[kernel]()
        reports = []
        for cfg in configs:
            _set_block_shapes(kernel, dict(nargs, **kwargs), cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"])
            reports.append(_compile_report(jit_fn, cfg, nargs, kwargs))
        return select_compiled(configs, reports, SMEM_LIMIT.get(_arch(), 227 * 1024))

    return prune


# --------------------------------------------------------------------------- dK/dV


@triton.jit
def _dkdv_block(dk, dv, k, v, desc_q, desc_do, desc_dq, off_b, off_h, start_m, offs_m, cols, LSE, LseLo, Delta, l_base,
                dmask_base, seqlen_q, seqlen_k, off, window_left, window_right, sm_scale, qk_scale, cap, slope,
                mask_base, stride_lm, stride_mm, stride_mn, stride_gm, stride_gn, dropout_p, seed, rng_offset,
                num_heads, max_q, max_k, EDGE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, DROPOUT: tl.constexpr,
                DOT_PRECISION: tl.constexpr, ATOMIC_DQ: tl.constexpr, MASK_GRAD: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK/dV (and atomic dQ) contributions of the query block at ``start_m`` of head ``off_h``
    to the resident key block, in transposed (keys x rows) tiles. ``EDGE``: the block may hold
    ragged rows or keys, the causal diagonal or a window's edge, so every element is compared
    and the row statistics are read under a predicate; else none of that."""
    rows = start_m + offs_m
    at = l_base + rows * stride_lm
    # Rows past the end (edge blocks only) read lse = +inf: P = 0 there. LSE is base 2 already.
    lse2, lse_lo = _lse_rows(LSE + at, LseLo + at, rows < seqlen_q, MASK_MODE, EDGE, True)
    if EDGE:
        delta = tl.load(Delta + at, mask=rows < seqlen_q, other=0.0)
    else:
        delta = tl.load(Delta + at)
    q = desc_q.load([off_b, off_h, start_m, 0]).reshape([BLOCK_M, BLOCK_D])
    qk_t = tl.dot(k, q.T, input_precision=DOT_PRECISION)
    ri = rows[None, :]
    cj = cols[:, None]
    p_t, t_t = _probs_at(qk_t, lse2[None, :], lse_lo[None, :], ri, cj, seqlen_q, seqlen_k, off, window_left,
                         window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn, EDGE, CAUSAL, WINDOW,
                         SOFTCAP, ALIBI, MASK_MODE)
    do = desc_do.load([off_b, off_h, start_m, 0]).reshape([BLOCK_M, BLOCK_D])
    if DROPOUT:
        # O = (P * Z) V with Z = keep / (1 - p): dV = (P * Z)^T dO and dP = Z * (dO V^T);
        # delta = rowsum(dO * O) is still rowsum(P * dP), so dS below is unchanged.
        keep_t = _dropout_keep_at(seed, rng_offset, dropout_p, off_b.to(tl.int64), off_h.to(tl.int64), num_heads,
                                  max_q, max_k, ri, cj)
        rp = 1.0 / (1.0 - dropout_p)
        dv += tl.dot(tl.where(keep_t, p_t * rp, 0.0).to(do.dtype), do, input_precision=DOT_PRECISION)
    else:
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, do.T, input_precision=DOT_PRECISION)
    if DROPOUT:
        dp_t = tl.where(keep_t, dp_t * rp, 0.0)
    ds_t = p_t * (dp_t - delta[None, :])
    if MASK_GRAD:
        # The additive mask enters after scaling and softcap: its gradient is dS itself, stored
        # by the one program that owns the key block (plain stores).
        tl.store(dmask_base + ri * stride_gm + cj * stride_gn, ds_t, mask=(ri < seqlen_q) & (cj < seqlen_k))
    if SOFTCAP:
        ds_t = ds_t * (1.0 - t_t * t_t)  # d(c * tanh(x / c))/dx = 1 - tanh^2
    ds_t = ds_t.to(q.dtype)
    dk += tl.dot(ds_t, q, input_precision=DOT_PRECISION)
    if ATOMIC_DQ:
        # One bulk fp32 reduction of the tile; rows past the end fall outside the descriptor.
        # The scale is applied once to the sum (launch_bwd_tma), not to every tile.
        dq = tl.dot(ds_t.T, k, input_precision=DOT_PRECISION)
        desc_dq.atomic_add([off_b, off_h, start_m, 0], dq.reshape([1, 1, BLOCK_M, BLOCK_D]))
    return dk, dv


@triton.autotune(configs=_configs("bwd_dkdv_tma"), key=_TUNE_KEY + ["ATOMIC_DQ", "MASK_GRAD"],
                 prune_configs_by={"early_config_prune": _prune("bwd_dkdv_tma")}, reset_to_zero=["DQAcc"])
@triton.jit
def _attn_bwd_dkdv_tma(
    desc_q, desc_k, desc_v, desc_do, desc_dk, desc_dv, desc_dq, DQAcc, LSE, LseLo, Delta, Alibi, Mask, DMask,
    stride_lb, stride_lh, stride_lm,
    stride_ab, stride_ah,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_gb, stride_gh, stride_gm, stride_gn,
    seqlen_q, seqlen_k, kv_group, sm_scale, softcap, window_left, window_right,
    dropout_p, seed, rng_offset, num_heads, seq_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ATOMIC_DQ: tl.constexpr, MASK_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # DQAcc (the atomic dQ buffer behind desc_dq) is an argument only so that the autotuner can
    # zero it between timed runs (reset_to_zero).
    tl.static_assert(not VARLEN, "varlen runs the pointer kernels")
    # Causal: the first key blocks are seen by the most query rows, so the natural order already
    # launches the heaviest programs first.
    start_n = tl.program_id(0) * BLOCK_N
    off_hk = tl.program_id(1)
    off_b = tl.program_id(2)
    off = 0
    if BOTTOM_RIGHT:
        off = seqlen_k - seqlen_q
    offs_m = tl.arange(0, BLOCK_M)
    cols = start_n + tl.arange(0, BLOCK_N)
    k = desc_k.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D])
    v = desc_v.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D])
    qk_scale, cap = _score_scale(sm_scale, softcap, SOFTCAP)
    max_q, max_k = seqlen_q, seqlen_k

    # [lo, full_lo): the causal diagonal (and a window's right edge); [full_lo, full_hi): the
    # interior; [full_hi, hi): a window's left edge and the ragged last row block. A key block
    # with ragged keys has no interior (full_lo == full_hi == lo): the last loop covers it.
    lo, hi, full_lo, full_hi = _query_ranges(start_n, seqlen_q, seqlen_k, off, window_left, window_right, BLOCK_M,
                                             BLOCK_N, CAUSAL, WINDOW)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(0, kv_group):  # every query head of this kv head's group: dK/dV summed in registers
        off_h = off_hk * kv_group + g
        l_base = off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh
        dmask_base = DMask + off_b.to(tl.int64) * stride_gb + off_h.to(tl.int64) * stride_gh
        slope, mask_base = _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI,
                                          MASK_MODE)
        for start_m in tl.range(lo, tl.minimum(full_lo, hi), BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, desc_q, desc_do, desc_dq, off_b, off_h, start_m, offs_m, cols, LSE,
                                 LseLo, Delta, l_base, dmask_base, seqlen_q, seqlen_k, off, window_left, window_right,
                                 sm_scale, qk_scale, cap, slope, mask_base, stride_lm, stride_mm, stride_mn, stride_gm,
                                 stride_gn, dropout_p, seed, rng_offset, num_heads, max_q, max_k, True, CAUSAL, WINDOW,
                                 SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, ATOMIC_DQ, MASK_GRAD, BLOCK_M,
                                 BLOCK_D)
        for start_m in tl.range(full_lo, full_hi, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, desc_q, desc_do, desc_dq, off_b, off_h, start_m, offs_m, cols, LSE,
                                 LseLo, Delta, l_base, dmask_base, seqlen_q, seqlen_k, off, window_left, window_right,
                                 sm_scale, qk_scale, cap, slope, mask_base, stride_lm, stride_mm, stride_mn, stride_gm,
                                 stride_gn, dropout_p, seed, rng_offset, num_heads, max_q, max_k, False, CAUSAL, WINDOW,
                                 SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, ATOMIC_DQ, MASK_GRAD, BLOCK_M,
                                 BLOCK_D)
        for start_m in tl.range(tl.maximum(full_lo, full_hi), hi, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, desc_q, desc_do, desc_dq, off_b, off_h, start_m, offs_m, cols, LSE,
                                 LseLo, Delta, l_base, dmask_base, seqlen_q, seqlen_k, off, window_left, window_right,
                                 sm_scale, qk_scale, cap, slope, mask_base, stride_lm, stride_mm, stride_mn, stride_gm,
                                 stride_gn, dropout_p, seed, rng_offset, num_heads, max_q, max_k, True, CAUSAL, WINDOW,
                                 SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, ATOMIC_DQ, MASK_GRAD, BLOCK_M,
                                 BLOCK_D)

    # Keys past seqlen_k and columns past HEAD_DIM fall outside the descriptors: not written.
    desc_dk.store([off_b, off_hk, start_n, 0], (dk * sm_scale).to(desc_dk.dtype).reshape([1, 1, BLOCK_N, BLOCK_D]))
    desc_dv.store([off_b, off_hk, start_n, 0], dv.to(desc_dv.dtype).reshape([1, 1, BLOCK_N, BLOCK_D]))


# --------------------------------------------------------------------------- dQ


@triton.jit
def _dq_block(dq, q, do, lse2, lse_lo, delta, desc_k, desc_v, off_b, off_h, off_hk, start_n, rows, offs_n, seqlen_q,
              seqlen_k, off, window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn,
              dropout_p, seed, rng_offset, num_heads, max_q, max_k, EDGE: tl.constexpr, CAUSAL: tl.constexpr,
              WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, MASK_MODE: tl.constexpr,
              DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ contribution of the key block at ``start_n`` to the resident query block (``EDGE``:
    compare every element; else interior)."""
    cols = start_n + offs_n
    k = desc_k.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D])
    qk = tl.dot(q, k.T, input_precision=DOT_PRECISION)
    ri = rows[:, None]
    cj = cols[None, :]
    p, t = _probs_at(qk, lse2[:, None], lse_lo[:, None], ri, cj, seqlen_q, seqlen_k, off, window_left, window_right,
                     qk_scale, cap, slope, mask_base, stride_mm, stride_mn, EDGE, CAUSAL, WINDOW, SOFTCAP, ALIBI,
                     MASK_MODE)
    v = desc_v.load([off_b, off_hk, start_n, 0]).reshape([BLOCK_N, BLOCK_D])
    dp = tl.dot(do, v.T, input_precision=DOT_PRECISION)
    if DROPOUT:
        keep = _dropout_keep_at(seed, rng_offset, dropout_p, off_b.to(tl.int64), off_h.to(tl.int64), num_heads, max_q,
                                max_k, ri, cj)
        dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
    ds = p * (dp - delta[:, None])
    if SOFTCAP:
        ds = ds * (1.0 - t * t)
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.autotune(configs=_configs("bwd_dq_tma"), key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune("bwd_dq_tma")})
@triton.jit
def _attn_bwd_dq_tma(
    desc_q, desc_k, desc_v, desc_do, desc_dq, LSE, LseLo, Delta, Alibi, Mask,
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
    """dQ of one query block by its own pass over key blocks: no atomics, a fixed summation order."""
    tl.static_assert(not VARLEN, "varlen runs the pointer kernels")
    start_m = _row_block_id(CAUSAL) * BLOCK_M  # causal: the heaviest row blocks first
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    off_hk = off_h // kv_group  # GQA: query head h reads kv head h // group, no repeated K/V
    off = 0
    if BOTTOM_RIGHT:
        off = seqlen_k - seqlen_q
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q = desc_q.load([off_b, off_h, start_m, 0]).reshape([BLOCK_M, BLOCK_D])
    do = desc_do.load([off_b, off_h, start_m, 0]).reshape([BLOCK_M, BLOCK_D])
    at = off_b.to(tl.int64) * stride_lb + off_h.to(tl.int64) * stride_lh + rows * stride_lm
    # Rows past the end read lse = +inf, so their P is exactly 0 in every block, interior or not.
    lse2, lse_lo = _lse_rows(LSE + at, LseLo + at, rows < seqlen_q, MASK_MODE, True, True)
    delta = tl.load(Delta + at, mask=rows < seqlen_q, other=0.0)
    qk_scale, cap = _score_scale(sm_scale, softcap, SOFTCAP)
    slope, mask_base = _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI,
                                      MASK_MODE)
    max_q, max_k = seqlen_q, seqlen_k

    lo, hi, full_lo, full_hi = _key_ranges(start_m, seqlen_k, off, window_left, window_right, BLOCK_M, BLOCK_N,
                                           CAUSAL, WINDOW)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Edge blocks before the interior (a window's left edge), the interior, then the edge blocks
    # after it (the causal diagonal, a window's right edge, the ragged end).
    for start_n in tl.range(lo, tl.minimum(full_lo, hi), BLOCK_N):
        dq = _dq_block(dq, q, do, lse2, lse_lo, delta, desc_k, desc_v, off_b, off_h, off_hk, start_n, rows, offs_n,
                       seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm,
                       stride_mn, dropout_p, seed, rng_offset, num_heads, max_q, max_k, True, CAUSAL, WINDOW, SOFTCAP,
                       ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, BLOCK_N, BLOCK_D)
    for start_n in tl.range(full_lo, full_hi, BLOCK_N):
        dq = _dq_block(dq, q, do, lse2, lse_lo, delta, desc_k, desc_v, off_b, off_h, off_hk, start_n, rows, offs_n,
                       seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm,
                       stride_mn, dropout_p, seed, rng_offset, num_heads, max_q, max_k, False, CAUSAL, WINDOW, SOFTCAP,
                       ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, BLOCK_N, BLOCK_D)
    for start_n in tl.range(tl.maximum(full_lo, full_hi), hi, BLOCK_N):
        dq = _dq_block(dq, q, do, lse2, lse_lo, delta, desc_k, desc_v, off_b, off_h, off_hk, start_n, rows, offs_n,
                       seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm,
                       stride_mn, dropout_p, seed, rng_offset, num_heads, max_q, max_k, True, CAUSAL, WINDOW, SOFTCAP,
                       ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, BLOCK_N, BLOCK_D)

    # Rows past seqlen_q and columns past HEAD_DIM fall outside the descriptor: not written.
    desc_dq.store([off_b, off_h, start_m, 0], (dq * sm_scale).to(desc_dq.dtype).reshape([1, 1, BLOCK_M, BLOCK_D]))


# --------------------------------------------------------------------------- launcher

_JIT = {"bwd_dkdv_tma": lambda: _attn_bwd_dkdv_tma.fn, "bwd_dq_tma": lambda: _attn_bwd_dq_tma.fn}


def launch_bwd_tma(q, k, v, dout, lse, lse_lo, delta, dq, dk, dv, dq_acc, dmask, ptrs, extra_strides, scalars,
                   flags) -> None:
    """Launch the TMA backward: dK/dV (with atomic dQ into the zero-filled fp32 ``dq_acc`` when
    it is given, then ``dq = scale * dq_acc``; else the deterministic dQ pass into ``dq``) and
    the mask gradient into ``dmask`` (or None), with the arguments
    :func:`fastattn.kernels.attention._common` derived (not varlen; every tensor
    TMA-compatible: :func:`unsupported_reason`). ``lse`` is the forward's
    (natural log; under an additive mask the base-2 row maxima, ``lse_lo`` the base-2 log row
    sums); it and ``delta`` share strides."""
    _cu_q, _cu_k, alibi, mask = ptrs
    batch, hq, hk, lq, lk = q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if flags["MASK_MODE"] != 2:
        # The kernels read a base-2 LSE: one multiply a row here, not one per row per tile there.
        # (An additive mask's row statistics are base 2 already.)
        lse = lse * LOG2E
    # Head-dim chunking is for fp32 above 128, which these kernels do not serve.
    flags = {name: value for name, value in flags.items() if name not in ("D_CHUNK", "BLOCK_DV")}
    atomic = dq_acc is not None
    grid = lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), hk, batch)
    _attn_bwd_dkdv_tma[grid](
        _descriptor(q), _descriptor(k), _descriptor(v), _descriptor(dout), _descriptor(dk), _descriptor(dv),
        _descriptor(dq_acc if atomic else dq), dq_acc if atomic else dq, lse, lse_lo, delta, alibi, mask,
        dmask if dmask is not None else q,
        *lse.stride(), *extra_strides, *(dmask.stride() if dmask is not None else (0, 0, 0, 0)),
        *scalars, ATOMIC_DQ=atomic, MASK_GRAD=dmask is not None, **flags,
    )
    if atomic:
        torch.mul(dq_acc, scalars[3], out=dq)  # scalars[3]: the softmax scale
    else:
        grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), hq, batch)
        _attn_bwd_dq_tma[grid](
            _descriptor(q), _descriptor(k), _descriptor(v), _descriptor(dout), _descriptor(dq), lse, lse_lo, delta,
            alibi, mask, *lse.stride(), *extra_strides, *scalars, **flags,
        )
