"""FlashAttention-2 forward and backward in Triton.

Math (one head, query row ``i``, key column ``j``, ``Lq`` queries, ``Lk`` keys)::

    s_ij = scale * q_i . k_j                   (then ``softcap * tanh(s / softcap)`` if softcap)
    s_ij += -slope * |i + Lk - Lq - j|         (ALiBi) ; + attn_mask_ij (float) ; -inf where hidden
    p_ij = exp(s_ij - lse_i),  lse_i = log sum_j exp(s_ij),  o_i = sum_j p_ij v_j

Forward (Dao, "FlashAttention-2", 2023, algorithm 1): one program owns ``BLOCK_M`` query
rows and streams ``BLOCK_N``-key blocks of K and V through an *online softmax*: it keeps
the running row max ``m``, the running sum ``l`` and an unnormalised fp32 accumulator,
rescaling both by ``exp(m_old - m_new)`` whenever the max grows. The scores never reach
memory: HBM traffic is O(L * D) instead of O(L^2). Exponentials are ``exp2`` with
``scale * log2(e)`` folded into one multiply of ``q.k`` (one FMA per score instead of a
multiply and a slower ``exp``). The log-sum-exp ``lse_i`` (natural log, fp32) is stored for
the backward. Key blocks that the causal mask or the window hides entirely are never
visited (the loop bounds are computed from the block's rows), in both alignments: key
``j`` is visible from row ``i`` iff ``i + off - window_left <= j <= i + off + window_right``
with ``off = Lk - Lq`` for bottom-right (flash-attn) and ``0`` for top-left (SDPA); causal
is ``window_right = 0``. A row that sees no key gets ``o = 0`` and ``lse = +inf``.

Of the visited blocks only the *edge* ones (the causal diagonal, a window's edges, the ragged
last block) compare elements; the interior ones, where every key is visible from every row
(their range is computed per program, as in the Triton tutorial's two stages), take a branch
with no bound check, no window compare and no select, and without features fold the scale and
the max subtraction into one FMA a score, ``exp2(qk * scale_log2e - m)``. The branch is uniform
per block, inside one loop: two loops would each keep their own copy of the Q tile and the
pipelined loads live, and spill the 128-row tiles. Causal query blocks launch heaviest first.
On Hopper (sm_90+) the forward runs the same math with its tiles moved by TMA and the interior
loop split out (kernels/attention_tma.py); varlen and head dims above 128 (fp32: above 64) stay here.
The same split runs in both backward kernels.

Backward (FA2, algorithm 2): ``delta_i = sum_d dO_id * O_id`` (a small preprocess kernel),
then, per key block, ``P = exp(S - lse)`` is recomputed and::

    dV_j += P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dK_j += scale * dS^T Q
    dQ_i += scale * dS K

One program owns a key block of one kv head and loops over every query head of its GQA
group, so dK/dV are summed over the group in registers (no repeated K/V, no atomics on
dK/dV). dQ is either accumulated by fp32 atomics from the same program (fast, order
non-deterministic) or, with ``deterministic=True``, computed by its own pass over key
blocks per query block (atomics-free, bitwise reproducible).

Shapes: tensors are ``(B, H, L, D)`` views taken by strides (the SDPA layout and the
flash layout ``(B, L, H, D).transpose(1, 2)`` alike, no copies). Varlen packs ``B == 1``
and sequence ``s`` spans rows ``cu_seqlens[s]:cu_seqlens[s+1]``. Any head dim 1..256 runs in a
power-of-two ``BLOCK_D`` tile with masked loads/stores; fp32 above 128, and its backward at
128 with features (``D_CHUNK``, ``BLOCK_DV``: :func:`head_dim_split`), sum ``Q K^T`` and
``dO V^T`` over 64-column chunks and split the columns each program writes over programs (O in
128-column, dK/dV and dQ in 64-column slices), because there every tile that holds a whole fp32
operand spills. Feature flags are
``tl.constexpr`` so a disabled feature costs nothing: ``CAUSAL``, ``WINDOW``,
``BOTTOM_RIGHT``, ``SOFTCAP``, ``ALIBI``, ``MASK_MODE`` (0 none, 1 bool, 2 additive;
``attn_mask`` broadcast by zero strides), ``VARLEN``, ``DROPOUT``.

Dropout (``DROPOUT``): ``O = (P * Z) V`` with ``Z_ij = keep_ij / (1 - p)``, ``keep_ij`` drawn by
Philox (``tl.rand``) from a counter that is a function of ``(seed, offset, b, h, i, j)`` alone
(:mod:`fastattn.philox` is its specification), so the backward kernels redraw the very mask
the forward used without storing it. The LSE is that of the undropped softmax.

Additive masks: a mask value such as ``finfo(float32).min`` makes ``|s|`` about 3e38, next to
which ``log(row sum)`` is below one ulp of an fp32 LSE, so ``exp(S - lse)`` would give 1, not
``1 / n``, on a wholly masked row (torch's softmax there is the uniform average). The backward
of an additive mask therefore recomputes the base-2 row max and ``log2(row sum)`` apart
(``_attn_bwd_rowstats``, one extra ``Q K^T`` pass) and reads ``P = exp2((s - max) - log2 sum)``.

Mask gradient (``MASK_GRAD``, a float ``attn_mask`` that requires grad): the mask is added
after the scale and the softcap, so ``d(mask)_ij = dS_ij``; the dK/dV program that owns key
block ``j`` stores its ``dS`` tiles into a zero-filled fp32 ``(B, Hq, Lq, Lk)`` buffer (each
element has exactly one writer: no atomics), which autograd then sums to the mask's shape.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._configs import select_compiled
from ._interpreter import ensure_interpreter_fixes
from .attention_shared import (_CANDIDATES, _INTERPRETER_CONFIG, _TUNE_KEY, INTERPRET, SMEM_LIMIT,  # noqa: F401
                               _arch, _compile_report, _dropout_keep, _forward_result, _head_operands, _key_ranges,
                               _lse_rows, _positive_score_scale, _probs_at, _query_ranges, _row_block_id, _score_scale,
                               _scores, _softmax_step, _tanh, candidates, kernel_configs, seq_bucket)
from . import attention_tma, attention_tma_bwd

__all__ = ["attention_fwd", "attention_bwd", "supports", "block_d", "kernel_configs", "select_compiled", "seq_bucket"]

# "Unbounded" window side: large enough to never bind, small enough that i + off + w stays in int32.
_FAR = 1 << 30

# --------------------------------------------------------------------------- capabilities and configs


def block_d(head_dim: int) -> int:
    """The register tile width for ``head_dim``: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def head_dim_split(bd: int, elem: int, kernel: str = "fwd", features: bool = False) -> tuple:
    """``(D_CHUNK, BLOCK_DV)`` of ``kernel`` ("fwd", "bwd_dkdv", "bwd_dq") for a ``bd``-wide
    head-dim tile of ``elem``-byte elements (``features``: window, softcap, ALiBi, a mask or
    dropout): ``(bd, bd)`` (whole tiles) except where every whole-tile candidate spills, in
    fp32 (tf32x3 keeps two copies of each dot operand): above 128, and the backward at 128 with
    features. There ``Q K^T`` and ``dO V^T`` are summed over 64-column chunks read as they are
    used, and the columns each program writes are split over programs, each recomputing the
    scores: the forward's O in 128-column slices, the backward's dK/dV and dQ (which hold more
    live tiles: dK and dV, or atomic dQ's product) in 64-column ones; wider slices spill
    (ptxas, sm_80 and sm_90a)."""
    if elem == 4 and (bd > 128 or (bd == 128 and features and kernel != "fwd")):
        return 64, (128 if kernel == "fwd" else 64)
    return bd, bd


def _has_features(flags: dict) -> bool:
    """Whether the launch ``flags`` turn on a feature (window, softcap, ALiBi, mask, dropout)."""
    return bool(flags["WINDOW"] or flags["SOFTCAP"] or flags["ALIBI"] or flags["MASK_MODE"] or flags["DROPOUT"])


def delta_block_m(bd: int) -> int:
    """Rows per program of the delta preprocess: two (rows x BLOCK_D) tiles stay within 64 fp32 registers a thread."""
    return max(16, min(64, 4096 // bd))


def _smem_bytes(kernel: str, bm: int, bn: int, bd: int, stages: int, elem: int) -> int:
    """Shared memory a config needs, estimated like Triton's tutorial ``keep()`` (tiles ``tl.dot`` stages
    through shared memory, streamed ones per stage); fp32 backward more: tf32x3 stages hi/lo halves.
    Only :func:`supports` uses it (whether any tile can fit this GPU at all); which tiles run is
    decided by the compiler's own report (:func:`fastattn.kernels._configs.select_compiled`)."""
    if kernel == "fwd":  # Q resident; K and V streamed
        return (bm * bd + stages * 2 * bn * bd) * elem
    if kernel == "bwd_dkdv":  # K, V resident; Q and dO streamed
        return (2 * bn * bd + max(stages, 2) * 2 * bm * bd + bm * bn) * elem * (2 if elem == 4 else 1)
    # bwd_dq: Q, dO resident; K and V streamed (+ the dS tile)
    return (2 * bm * bd + stages * 2 * bn * bd + bm * bn) * elem * (3 if elem == 4 else 2) // 2


def fits_smem(kernel: str, cfg: dict, arch: int, bd: int, elem: int) -> bool:
    """Whether ``cfg``'s tiles fit the shared memory of one block on compute capability ``arch``,
    by the estimate of :func:`_smem_bytes` (head-dim chunked tiles, :func:`head_dim_split`, as
    whole tiles of the width each program writes: no staged operand is wider)."""
    width = head_dim_split(bd, elem, kernel)[1]
    need = _smem_bytes(kernel, cfg["BLOCK_M"], cfg["BLOCK_N"], width, cfg["num_stages"], elem)
    return need <= SMEM_LIMIT.get(arch, 99 * 1024)


def _configs(kernel: str) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]}, num_warps=c["num_warps"],
                      num_stages=c["num_stages"], maxnreg=c.get("maxnreg"))
        for c in kernel_configs(kernel)
    ]


def _as_dict(cfg: triton.Config) -> dict:
    d = dict(BLOCK_M=cfg.kwargs["BLOCK_M"], BLOCK_N=cfg.kwargs["BLOCK_N"], num_warps=cfg.num_warps,
             num_stages=cfg.num_stages)
    return d if cfg.maxnreg is None else dict(d, maxnreg=cfg.maxnreg)


def _prune(kernel: str):
    def prune(configs, nargs, **kwargs):
        if INTERPRET or len(configs) == 1:
            return configs
        if kwargs.get("D_CHUNK", 0) < kwargs.get("BLOCK_D", 0):  # fp32 above 128: the chunked path's tiles
            tiles = {(c["BLOCK_M"], c["BLOCK_N"], c["num_warps"]) for c in candidates(kernel, chunked=True)}
            configs = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) in tiles]
        jit_fn = _JIT[kernel]()
        reports = [_compile_report(jit_fn, c, nargs, kwargs) for c in configs]
        return select_compiled(configs, reports, SMEM_LIMIT.get(_arch(), 99 * 1024))

    return prune


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _seq_bounds(CuSeqQ, CuSeqK, off_b, seqlen_q, seqlen_k, VARLEN: tl.constexpr):
    """(first row of the sequence in the packed dim, its Lq, first key row, its Lk)."""
    if VARLEN:
        start_q = tl.load(CuSeqQ + off_b).to(tl.int64)
        end_q = tl.load(CuSeqQ + off_b + 1).to(tl.int64)
        start_k = tl.load(CuSeqK + off_b).to(tl.int64)
        end_k = tl.load(CuSeqK + off_b + 1).to(tl.int64)
        return start_q, (end_q - start_q).to(tl.int32), start_k, (end_k - start_k).to(tl.int32)
    return tl.zeros([], tl.int64), seqlen_q, tl.zeros([], tl.int64), seqlen_k


@triton.jit
def _program_sequence(CuSeqQ, CuSeqK, seqlen_q, seqlen_k, VARLEN: tl.constexpr, BOTTOM_RIGHT: tl.constexpr):
    """The sequence of this program (grid axis 2: batch entry, varlen: packed sequence):
    ``(off_b, bq, start_q, seqlen_q, start_k, seqlen_k, off)``, ``bq`` the index into the batch
    dim of the tensors (0 when varlen packs every sequence into one), ``start_*`` the
    sequence's first row in the packed dim, ``seqlen_*`` its lengths and ``off`` the causal
    alignment (``Lk - Lq`` bottom-right, 0 top-left)."""
    off_b = tl.program_id(2).to(tl.int64)
    start_q, seqlen_q, start_k, seqlen_k = _seq_bounds(CuSeqQ, CuSeqK, off_b, seqlen_q, seqlen_k, VARLEN)
    if VARLEN:
        bq = 0
    else:
        bq = off_b
    off = 0
    if BOTTOM_RIGHT:
        off = seqlen_k - seqlen_q
    return off_b, bq, start_q, seqlen_q, start_k, seqlen_k, off


@triton.jit
def _split_program(pid, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``(block, dv0)`` of grid index ``pid`` along axis 0: with ``BLOCK_DV < BLOCK_D`` each row
    (or key) block has ``BLOCK_D // BLOCK_DV`` programs, one per ``BLOCK_DV``-column slice of the
    head dim that it writes (O, dK/dV, dQ), from column ``dv0``; else one, ``dv0 = 0``."""
    if BLOCK_DV == BLOCK_D:
        block = pid
        dv0 = 0
    else:
        block = pid // (BLOCK_D // BLOCK_DV)
        dv0 = (pid % (BLOCK_D // BLOCK_DV)) * BLOCK_DV
    return block, dv0


@triton.jit
def _row_program(CuSeqQ, CuSeqK, seqlen_q, seqlen_k, kv_group, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
                 BOTTOM_RIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """What a program of the forward or the dQ pass owns (grid: row block (x head-dim slice),
    query head, batch entry): :func:`_program_sequence`'s values with the query head ``off_h``,
    its kv head ``off_hk`` (GQA: query head h reads kv head h // group, no repeated K/V), the
    block's first row ``start_m`` (at or past ``seqlen_q`` when varlen gave this sequence fewer
    rows) and the first head-dim column ``dv0`` it writes (:func:`_split_program`)."""
    off_h = tl.program_id(1).to(tl.int64)
    off_b, bq, start_q, seqlen_q, start_k, seqlen_k, off = _program_sequence(CuSeqQ, CuSeqK, seqlen_q, seqlen_k,
                                                                             VARLEN, BOTTOM_RIGHT)
    block, dv0 = _split_program(_row_block_id(CAUSAL), BLOCK_D, BLOCK_DV)
    return off_b, off_h, off_h // kv_group, bq, start_q, seqlen_q, start_k, seqlen_k, off, block * BLOCK_M, dv0



@triton.jit
def _tile_offsets(HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """In-tile offsets of rows, keys and head-dim columns, and which columns are real
    (``< HEAD_DIM``: a head dim that is not a power of two runs in a wider ``BLOCK_D`` tile)."""
    offs_d = tl.arange(0, BLOCK_D)
    return tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), offs_d, offs_d < HEAD_DIM


@triton.jit
def _dv_offsets(offs_d, d_ok, dv0, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """The head-dim columns a program writes and which are real: all of ``offs_d``, or the
    ``BLOCK_DV``-wide slice from ``dv0`` (:func:`_split_program`)."""
    if BLOCK_DV == BLOCK_D:
        offs_dv = offs_d
        dv_ok = d_ok
    else:
        offs_dv = dv0 + tl.arange(0, BLOCK_DV)
        dv_ok = offs_dv < HEAD_DIM
    return offs_dv, dv_ok


@triton.jit
def _dot_chunked(a_base, stride_ar, stride_ad, offs_a, a_ok, b_base, stride_br, stride_bd, offs_b, b_ok,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """``A B^T`` (fp32, ``BLOCK_A x BLOCK_B``) of the rows ``offs_a`` of A and ``offs_b`` of B
    (row ``r`` of A at ``a_base + r * stride_ar``, rows outside ``a_ok``/``b_ok`` read as 0),
    summed over the head dim ``D_CHUNK`` columns at a time, each chunk read from memory (L1/L2)
    when it is used. For fp32 at head dims above 128: tf32x3 keeps a high and a low copy of
    every dot operand, and a whole (16 x 256) operand is 256 registers a thread in the MMA
    layout, so no tile holds Q, K, V or dO whole. A loop (not unrolled), so the compiler does
    not hoist the loads of a loop-invariant operand out of the caller's loop."""
    offs_c = tl.arange(0, D_CHUNK)
    acc = tl.zeros([BLOCK_A, BLOCK_B], tl.float32)
    for d0 in range(0, BLOCK_D, D_CHUNK):
        c = d0 + offs_c
        c_ok = c < HEAD_DIM
        a = tl.load(a_base + offs_a[:, None] * stride_ar + c[None, :] * stride_ad, mask=a_ok[:, None] & c_ok[None, :],
                    other=0.0)
        b = tl.load(b_base + offs_b[None, :] * stride_br + c[:, None] * stride_bd, mask=b_ok[None, :] & c_ok[:, None],
                    other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _dot_t(a, b, a_base, stride_ar, stride_ad, offs_a, a_ok, b_base, stride_br, stride_bd, offs_b, b_ok,
           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, D_CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr,
           BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """``A B^T`` over the head dim (``Q K^T``, ``dO V^T``): of the held whole tiles ``a`` and
    ``b``, or, on the chunked path (``D_CHUNK < BLOCK_D``), by :func:`_dot_chunked` from memory
    (``a``/``b`` are then unused)."""
    if D_CHUNK == BLOCK_D:
        out = tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION)
    else:
        out = _dot_chunked(a_base, stride_ar, stride_ad, offs_a, a_ok, b_base, stride_br, stride_bd, offs_b, b_ok,
                           HEAD_DIM, BLOCK_D, D_CHUNK, DOT_PRECISION, BLOCK_A, BLOCK_B)
    return out


# --------------------------------------------------------------------------- forward


@triton.jit
def _fwd_loop(acc, l_i, m_i, q_ptrs, q_ok, q_base, stride_qm, stride_qd, offs_m, flip_q, k_base, v_base, lo, hi,
              full_lo, full_hi, rows, offs_n, offs_d, offs_dv, dv_ok, seqlen_q, seqlen_k, off, window_left,
              window_right, qk_scale, cap, slope, mask_base, stride_kn, stride_kd, stride_vn, stride_vd, stride_mm,
              stride_mn, dropout_p, seed, rng_offset, off_b, off_h, num_heads, max_q, max_k, CAUSAL: tl.constexpr,
              WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, MASK_MODE: tl.constexpr,
              DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, D_CHUNK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """The online-softmax update over key blocks ``lo, lo + BLOCK_N, ... < hi``.

    Blocks in ``[full_lo, full_hi)`` are interior: no element compare, no select, and without
    features the scale and the max subtraction fold into one FMA per score,
    ``qk * scale_log2e - m``. The others (the causal diagonal, a window's edges, the ragged last
    block) take the masked branch. One loop with a uniform branch rather than one loop per kind:
    the tile, its pipelined loads and the accumulators are shared, so registers are too.

    ``D_CHUNK < BLOCK_D`` (fp32 at head dims above 128): Q K^T is summed over head-dim chunks
    read as they are used (:func:`_dot_chunked`) and ``acc`` holds the ``BLOCK_DV`` columns
    ``offs_dv`` of the output only."""
    d_ok = offs_d < HEAD_DIM
    if D_CHUNK == BLOCK_D:
        q = tl.load(q_ptrs, mask=q_ok, other=0.0)
        if flip_q:  # q.k * scale == (-q).k * |scale| exactly: the loop may then assume scale > 0
            q = -q
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        n64 = tl.cast(start_n, tl.int64)
        # Keys past the end load as 0 (one predicate per key, not per score); their scores are
        # hidden by the masked branch.
        kv_ok = cols < seqlen_k
        if D_CHUNK < BLOCK_D:
            qk = _dot_chunked(q_base, stride_qm, stride_qd, offs_m, rows < seqlen_q, k_base + n64 * stride_kn,
                              stride_kn, stride_kd, offs_n, kv_ok, HEAD_DIM, BLOCK_D, D_CHUNK, DOT_PRECISION, BLOCK_M,
                              BLOCK_N)
            if flip_q:
                qk = -qk
        elif HEAD_DIM == BLOCK_D:
            k = tl.load(k_base + n64 * stride_kn + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                        mask=kv_ok[None, :], other=0.0)
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        else:
            k = tl.load(k_base + n64 * stride_kn + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                        mask=kv_ok[None, :] & d_ok[:, None], other=0.0)
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        if (start_n >= full_lo) & (start_n < full_hi):
            p, alpha, l_i, m_new = _softmax_step(qk, m_i, l_i, rows, cols, seqlen_q, seqlen_k, off, window_left,
                                                 window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn,
                                                 False, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE)
        else:
            p, alpha, l_i, m_new = _softmax_step(qk, m_i, l_i, rows, cols, seqlen_q, seqlen_k, off, window_left,
                                                 window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn,
                                                 True, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE)
        if DROPOUT:
            keep = _dropout_keep(seed, rng_offset, dropout_p, off_b, off_h, num_heads, max_q, max_k, rows, cols)
            p = tl.where(keep, p, 0.0)
        if HEAD_DIM == BLOCK_D:
            v = tl.load(v_base + n64 * stride_vn + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                        mask=kv_ok[:, None], other=0.0)
        else:
            v = tl.load(v_base + n64 * stride_vn + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                        mask=kv_ok[:, None] & dv_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_configs("fwd"), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune("fwd")})
@triton.jit
def _attn_fwd(
    Q, K, V, Out, LSE, CuSeqQ, CuSeqK, Alibi, Mask,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm,
    stride_ab, stride_ah,
    stride_mb, stride_mh, stride_mm, stride_mn,
    seqlen_q, seqlen_k, kv_group, sm_scale, softcap, window_left, window_right,
    dropout_p, seed, rng_offset, num_heads, seq_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, D_CHUNK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    max_q, max_k = seqlen_q, seqlen_k  # the dropout counter space (varlen: the longest sequence)
    off_b, off_h, off_hk, bq, start_q, seqlen_q, start_k, seqlen_k, off, start_m, dv0 = _row_program(
        CuSeqQ, CuSeqK, seqlen_q, seqlen_k, kv_group, CAUSAL, VARLEN, BOTTOM_RIGHT, BLOCK_M, BLOCK_D, BLOCK_DV)
    if start_m >= seqlen_q:  # varlen: this sequence is shorter than the longest one
        return

    offs_m, offs_n, offs_d, d_ok = _tile_offsets(HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    offs_dv, dv_ok = _dv_offsets(offs_d, d_ok, dv0, HEAD_DIM, BLOCK_D, BLOCK_DV)
    rows = start_m + offs_m

    # int64 bases; in-tile offsets stay small int32.
    q_base = Q + bq * stride_qb + off_h * stride_qh + (start_q + start_m) * stride_qm
    k_base = K + bq * stride_kb + off_hk * stride_kh + start_k * stride_kn
    v_base = V + bq * stride_vb + off_hk * stride_vh + start_k * stride_vn
    q_ptrs = q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q_ok = (rows[:, None] < seqlen_q) & d_ok[None, :]

    qk_scale, cap, flip_q = _positive_score_scale(sm_scale, softcap, SOFTCAP)
    slope, mask_base = _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI,
                                      MASK_MODE)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    # Key blocks wholly above the causal diagonal or outside the window are skipped, not masked;
    # of the rest, only the edge blocks (window edges, the diagonal, the ragged last block)
    # compare elements.
    lo, hi, full_lo, full_hi = _key_ranges(start_m, seqlen_k, off, window_left, window_right, BLOCK_M, BLOCK_N,
                                           CAUSAL, WINDOW)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q_ptrs, q_ok, q_base, stride_qm, stride_qd, offs_m, flip_q, k_base,
                              v_base, lo, hi, full_lo, full_hi, rows, offs_n, offs_d, offs_dv, dv_ok, seqlen_q, seqlen_k,
                              off, window_left, window_right, qk_scale, cap, slope, mask_base, stride_kn, stride_kd,
                              stride_vn, stride_vd, stride_mm, stride_mn, dropout_p, seed, rng_offset, off_b, off_h,
                              num_heads, max_q, max_k, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE, DROPOUT,
                              DOT_PRECISION, HEAD_DIM, BLOCK_D, BLOCK_N, BLOCK_M, D_CHUNK, BLOCK_DV)

    acc, lse = _forward_result(acc, l_i, m_i, dropout_p, DROPOUT)
    o_base = Out + bq * stride_ob + off_h * stride_oh + (start_q + start_m) * stride_om
    tl.store(o_base + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od, acc.to(Out.dtype.element_ty),
             mask=(rows[:, None] < seqlen_q) & dv_ok[None, :])
    l_base = LSE + bq * stride_lb + off_h * stride_lh + (start_q + start_m) * stride_lm
    if BLOCK_DV == BLOCK_D:
        tl.store(l_base + offs_m * stride_lm, lse, mask=rows < seqlen_q)
    else:  # every head-dim slice computed the same LSE: the first stores it
        tl.store(l_base + offs_m * stride_lm, lse, mask=rows < tl.where(dv0 == 0, seqlen_q, 0))


# --------------------------------------------------------------------------- backward


@triton.jit
def _attn_bwd_delta(
    Out, DOut, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_lb, stride_lh, stride_lm,
    seqlen_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta_i = sum_d dO_id * O_id, fp32: the rowsum(P * dP) term of the softmax gradient."""
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = ((start_m + offs_m)[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + off_b * stride_ob + off_h * stride_oh + tl.cast(start_m, tl.int64) * stride_om
                + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, mask=ok, other=0.0)
    do = tl.load(DOut + off_b * stride_db + off_h * stride_dh + tl.cast(start_m, tl.int64) * stride_dm
                 + offs_m[:, None] * stride_dm + offs_d[None, :] * stride_dd, mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + off_b * stride_lb + off_h * stride_lh + tl.cast(start_m, tl.int64) * stride_lm + offs_m * stride_lm,
             delta, mask=start_m + offs_m < seqlen_q)


@triton.jit
def _attn_bwd_rowstats(
    Q, K, Alibi, Mask, Hi, Lo,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_lb, stride_lh, stride_lm,
    stride_ab, stride_ah,
    stride_mb, stride_mh, stride_mm, stride_mn,
    seqlen_q, seqlen_k, kv_group, sm_scale, softcap, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, DOT_PRECISION: tl.constexpr, D_CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Base-2 row statistics of the scores under an additive mask, for the backward:
    ``Hi_i = max_j s_ij`` and ``Lo_i = log2 sum_j exp2(s_ij - Hi_i)`` (``+inf`` and 0 for a row that
    sees no key), so that ``P = exp2((s - Hi) - Lo)``.

    The forward's single fp32 LSE cannot serve such rows: a mask value like ``finfo.min`` makes
    ``|s|`` about 3e38, next to which ``log2(row sum)`` is below one ulp, and the backward would
    read every key of a wholly masked row with probability 1 instead of ``1 / n``. Kept apart,
    ``s - Hi`` is exact (0 for the row's maximal keys) and ``Lo`` keeps the normaliser."""
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    off_hk = off_h // kv_group
    start_m = pid_m * BLOCK_M
    off = 0
    if BOTTOM_RIGHT:
        off = seqlen_k - seqlen_q
    offs_m, offs_n, offs_d, d_ok = _tile_offsets(HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    rows = start_m + offs_m
    q_base = Q + off_b * stride_qb + off_h * stride_qh + tl.cast(start_m, tl.int64) * stride_qm
    if D_CHUNK == BLOCK_D:
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                    mask=(rows[:, None] < seqlen_q) & d_ok[None, :], other=0.0)
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    qk_scale, cap = _score_scale(sm_scale, softcap, SOFTCAP)
    slope, mask_base = _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI, 2)
    # Named, not "_": Triton's compiler types every loop-carried name, and "_" is reassigned below.
    lo, hi, _full_lo, _full_hi = _key_ranges(start_m, seqlen_k, off, window_left, window_right, BLOCK_M, BLOCK_N,
                                             CAUSAL, WINDOW)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if D_CHUNK == BLOCK_D:
            k = tl.load(k_base + tl.cast(start_n, tl.int64) * stride_kn + offs_n[None, :] * stride_kn
                        + offs_d[:, None] * stride_kd, mask=(cols < seqlen_k)[None, :] & d_ok[:, None], other=0.0)
            qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        else:
            qk = _dot_chunked(q_base, stride_qm, stride_qd, offs_m, rows < seqlen_q,
                              k_base + tl.cast(start_n, tl.int64) * stride_kn, stride_kn, stride_kd, offs_n,
                              cols < seqlen_k, HEAD_DIM, BLOCK_D, D_CHUNK, DOT_PRECISION, BLOCK_M, BLOCK_N)
        s, _edge = _scores(qk, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope,
                       mask_base, stride_mm, stride_mn, True, CAUSAL, WINDOW, SOFTCAP, ALIBI, 2)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_sub) + tl.sum(tl.math.exp2(s - m_sub[:, None]), 1)
        m_i = m_new
    empty = l_i == 0.0
    out = off_b * stride_lb + off_h * stride_lh + tl.cast(start_m, tl.int64) * stride_lm + offs_m * stride_lm
    tl.store(Hi + out, tl.where(empty, float("inf"), m_i), mask=rows < seqlen_q)
    tl.store(Lo + out, tl.where(empty, 0.0, tl.math.log2(tl.where(empty, 1.0, l_i))), mask=rows < seqlen_q)


def rowstats_tile(bd: int, elem: int) -> tuple:
    """(BLOCK_M, BLOCK_N, num_warps) of the row-statistics pass, by the width of its Q tile in
    bytes: 64 x 64 on 4 warps up to 128; on 8 warps up to 256 (128 16-bit columns: on 4 warps,
    with every feature on, ptxas reported 536 spilled bytes on sm_80); wider, 32 x 32 for 16-bit
    and 16 x 32 for fp32, whose tf32x3 dot keeps three products live (32 x 32 spilled 492-1244
    bytes at head dim 128, on 4 warps and on 8)."""
    if INTERPRET:
        return 64, 32, 4
    width = bd * elem
    if width <= 128:
        return 64, 64, 4
    if width <= 256:
        return 64, 64, 8
    return (16, 32, 4) if elem == 4 else (32, 32, 4)


@triton.jit
def _tile_probs(qk, lse2, lse_lo, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope,
                mask_base, stride_mm, stride_mn, EDGE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, MASK_MODE: tl.constexpr):
    """:func:`_bwd_probs` for one kind of tile: ``EDGE`` compares every element; an interior
    tile without features computes ``P = exp2(qk * scale_log2e - lse2)``, one FMA a score."""
    return _probs_at(qk, lse2[:, None], lse_lo[:, None], rows[:, None], cols[None, :], seqlen_q, seqlen_k, off,
                     window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn, EDGE, CAUSAL,
                     WINDOW, SOFTCAP, ALIBI, MASK_MODE)


@triton.jit
def _bwd_probs(qk, interior, lse2, lse_lo, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale,
               cap, slope, mask_base, stride_mm, stride_mn, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
               SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, MASK_MODE: tl.constexpr):
    """``(p, t)`` of one tile of raw products ``qk`` in the backward: the probabilities
    ``P = exp2(s - lse2)`` recomputed from the forward's LSE and ``tanh`` of the softcapped
    scores (for the chain rule). ``interior`` (uniform over the tile: every key visible from
    every row) takes the branch without element compares; the others (the diagonal, a
    window's edges, ragged rows or keys) the masked one."""
    if interior:
        p, t = _tile_probs(qk, lse2, lse_lo, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale,
                           cap, slope, mask_base, stride_mm, stride_mn, False, CAUSAL, WINDOW, SOFTCAP, ALIBI,
                           MASK_MODE)
    else:
        p, t = _tile_probs(qk, lse2, lse_lo, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale,
                           cap, slope, mask_base, stride_mm, stride_mn, True, CAUSAL, WINDOW, SOFTCAP, ALIBI,
                           MASK_MODE)
    return p, t


@triton.jit
def _dkdv_loop(dk, dv, k, v, k_base, v_base, q_base, do_base, l_base, lo_base, d_base, dq_base, dmask_base, lo, hi,
               full_lo, full_hi, offs_m, offs_n, offs_d, offs_dv, dv_ok, dv0, cols, seqlen_q, seqlen_k, off,
               window_left, window_right, sm_scale, qk_scale, cap, slope, mask_base, stride_kn, stride_kd, stride_vn,
               stride_vd, stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, stride_dqm, stride_dqd, stride_mm,
               stride_mn, stride_gm, stride_gn, dropout_p, seed, rng_offset, off_b, off_h, num_heads, max_q, max_k,
               CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
               ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
               ATOMIC_DQ: tl.constexpr, MASK_GRAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_CHUNK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dK/dV (and atomic dQ) contributions of query blocks ``lo, lo + BLOCK_M, ... < hi`` to one
    resident key block. Blocks in ``[full_lo, full_hi)`` are interior: no element compare or
    select, and without features ``P = exp2(qk * scale_log2e - lse_log2)`` is one FMA a score;
    the others (the diagonal, a window's edges, ragged rows or keys) take the masked branch.

    ``D_CHUNK < BLOCK_D`` (fp32 at head dims above 128): ``k`` holds only the ``BLOCK_DV``
    columns ``offs_dv`` this program writes (for atomic dQ), Q K^T and dO V^T are summed over
    head-dim chunks of Q, K, dO and V read as they are used (:func:`_dot_chunked`), and dK, dV
    and dQ are accumulated for those columns only."""
    d_ok = offs_d < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        row_off = tl.cast(start_m, tl.int64)
        # Rows past the end load as 0 and read lse = +inf (P = 0): one predicate a row.
        r_ok = rows < seqlen_q
        if HEAD_DIM == BLOCK_D:
            q_ok = r_ok[:, None]
        else:
            q_ok = r_ok[:, None] & d_ok[None, :]
        if D_CHUNK == BLOCK_D:
            o_ok = q_ok
            q = tl.load(q_base + row_off * stride_qm + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                        mask=q_ok, other=0.0)
        else:  # the columns of dK = dS^T Q this program writes
            o_ok = r_ok[:, None] & dv_ok[None, :]
            q = tl.load(q_base + row_off * stride_qm + offs_m[:, None] * stride_qm + offs_dv[None, :] * stride_qd,
                        mask=o_ok, other=0.0)
        lse2, lse_lo = _lse_rows(l_base + row_off * stride_lm + offs_m * stride_lm,
                                 lo_base + row_off * stride_lm + offs_m * stride_lm, r_ok, MASK_MODE)
        qk = _dot_t(q, k, q_base + row_off * stride_qm, stride_qm, stride_qd, offs_m, r_ok, k_base, stride_kn,
                    stride_kd, offs_n, cols < seqlen_k, HEAD_DIM, BLOCK_D, D_CHUNK, DOT_PRECISION, BLOCK_M, BLOCK_N)
        p, t = _bwd_probs(qk, (start_m >= full_lo) & (start_m < full_hi), lse2, lse_lo, rows, cols, seqlen_q, seqlen_k,
                          off, window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn, CAUSAL,
                          WINDOW, SOFTCAP, ALIBI, MASK_MODE)
        do = tl.load(do_base + row_off * stride_dom + offs_m[:, None] * stride_dom + offs_dv[None, :] * stride_dod,
                     mask=o_ok, other=0.0)
        delta = tl.load(d_base + row_off * stride_lm + offs_m * stride_lm, mask=r_ok, other=0.0)
        if DROPOUT:
            # O = (P * Z) V with Z = keep / (1 - p): dV = (P * Z)^T dO and dP = Z * (dO V^T);
            # delta = rowsum(dO * O) is still rowsum(P * dP), so dS below is unchanged.
            keep = _dropout_keep(seed, rng_offset, dropout_p, off_b, off_h, num_heads, max_q, max_k, rows, cols)
            rp = 1.0 / (1.0 - dropout_p)
            dv += tl.dot(tl.trans(tl.where(keep, p * rp, 0.0).to(do.dtype)), do, input_precision=DOT_PRECISION)
        else:
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dp = _dot_t(do, v, do_base + row_off * stride_dom, stride_dom, stride_dod, offs_m, r_ok, v_base, stride_vn,
                    stride_vd, offs_n, cols < seqlen_k, HEAD_DIM, BLOCK_D, D_CHUNK, DOT_PRECISION, BLOCK_M, BLOCK_N)
        if DROPOUT:
            dp = tl.where(keep, dp * rp, 0.0)
        ds = p * (dp - delta[:, None])
        if MASK_GRAD:
            # The additive mask enters after scaling and softcap: its gradient is dS itself.
            # Each (b, h, i, j) has exactly one owner program (its key block; of its head-dim
            # slices, the first), so plain stores.
            if BLOCK_DV == BLOCK_D:
                g_rows = seqlen_q
            else:
                g_rows = tl.where(dv0 == 0, seqlen_q, 0)
            tl.store(dmask_base + rows[:, None] * stride_gm + cols[None, :] * stride_gn, ds,
                     mask=(rows[:, None] < g_rows) & (cols[None, :] < seqlen_k))
        if SOFTCAP:
            ds = ds * (1.0 - t * t)  # d(c * tanh(x / c))/dx = 1 - tanh^2
        ds = ds.to(q.dtype)
        dk += tl.dot(tl.trans(ds), q, input_precision=DOT_PRECISION)
        if ATOMIC_DQ:
            dq = tl.dot(ds, k, input_precision=DOT_PRECISION) * sm_scale
            tl.atomic_add(dq_base + row_off * stride_dqm + offs_m[:, None] * stride_dqm + offs_dv[None, :] * stride_dqd,
                          dq, mask=o_ok, sem="relaxed")
    return dk, dv


@triton.autotune(configs=_configs("bwd_dkdv"), key=_TUNE_KEY + ["ATOMIC_DQ", "MASK_GRAD"],
                 prune_configs_by={"early_config_prune": _prune("bwd_dkdv")}, reset_to_zero=["DQAcc"])
@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DOut, LSE, LseLo, Delta, DK, DV, DQAcc, CuSeqQ, CuSeqK, Alibi, Mask, DMask,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_lb, stride_lh, stride_lm,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_ab, stride_ah,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_gb, stride_gh, stride_gm, stride_gn,
    seqlen_q, seqlen_k, kv_group, sm_scale, softcap, window_left, window_right,
    dropout_p, seed, rng_offset, num_heads, seq_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, D_CHUNK: tl.constexpr, BLOCK_DV: tl.constexpr,
    ATOMIC_DQ: tl.constexpr, MASK_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Causal: the first key blocks are seen by the most query rows, so the natural order already
    # launches the heaviest programs first.
    pid_n, dv0 = _split_program(tl.program_id(0), BLOCK_D, BLOCK_DV)
    off_hk = tl.program_id(1).to(tl.int64)
    max_q, max_k = seqlen_q, seqlen_k  # the dropout counter space (varlen: the longest sequence)
    off_b, bq, start_q, seqlen_q, start_k, seqlen_k, off = _program_sequence(CuSeqQ, CuSeqK, seqlen_q, seqlen_k,
                                                                             VARLEN, BOTTOM_RIGHT)
    start_n = pid_n * BLOCK_N
    if start_n >= seqlen_k:
        return

    offs_m, offs_n, offs_d, d_ok = _tile_offsets(HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    offs_dv, dv_ok = _dv_offsets(offs_d, d_ok, dv0, HEAD_DIM, BLOCK_D, BLOCK_DV)
    cols = start_n + offs_n
    kv_ok = (cols[:, None] < seqlen_k) & d_ok[None, :]

    k_base = K + bq * stride_kb + off_hk * stride_kh + (start_k + start_n) * stride_kn
    v_base = V + bq * stride_vb + off_hk * stride_vh + (start_k + start_n) * stride_vn
    if D_CHUNK == BLOCK_D:
        out_ok = kv_ok
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_ok, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_ok, other=0.0)
    else:  # only the columns this program writes, for atomic dQ's dS K (the loop reads K and V by chunks)
        out_ok = (cols[:, None] < seqlen_k) & dv_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_dv[None, :] * stride_kd, mask=out_ok, other=0.0)
        v = k
    qk_scale, cap = _score_scale(sm_scale, softcap, SOFTCAP)

    lo, hi, full_lo, full_hi = _query_ranges(start_n, seqlen_q, seqlen_k, off, window_left, window_right,
                                             BLOCK_M, BLOCK_N, CAUSAL, WINDOW)

    dk = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for g in range(0, kv_group):  # every query head of this kv head's group: dK/dV summed in registers
        off_h = off_hk * kv_group + g
        q_base = Q + bq * stride_qb + off_h * stride_qh + start_q * stride_qm
        do_base = DOut + bq * stride_dob + off_h * stride_doh + start_q * stride_dom
        l_base = LSE + bq * stride_lb + off_h * stride_lh + start_q * stride_lm
        lo_base = LseLo + bq * stride_lb + off_h * stride_lh + start_q * stride_lm
        d_base = Delta + bq * stride_lb + off_h * stride_lh + start_q * stride_lm
        dq_base = DQAcc + bq * stride_dqb + off_h * stride_dqh + start_q * stride_dqm
        dmask_base = DMask + off_b * stride_gb + off_h * stride_gh
        slope, mask_base = _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI,
                                          MASK_MODE)
        dk, dv = _dkdv_loop(dk, dv, k, v, k_base, v_base, q_base, do_base, l_base, lo_base, d_base, dq_base,
                            dmask_base, lo, hi, full_lo, full_hi, offs_m, offs_n, offs_d, offs_dv, dv_ok, dv0, cols,
                            seqlen_q, seqlen_k, off, window_left, window_right, sm_scale, qk_scale, cap, slope,
                            mask_base, stride_kn, stride_kd, stride_vn, stride_vd, stride_qm, stride_qd, stride_dom,
                            stride_dod, stride_lm, stride_dqm, stride_dqd, stride_mm, stride_mn, stride_gm, stride_gn,
                            dropout_p, seed, rng_offset, off_b, off_h, num_heads, max_q, max_k, CAUSAL, WINDOW,
                            SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, ATOMIC_DQ, MASK_GRAD, HEAD_DIM, BLOCK_D,
                            BLOCK_M, BLOCK_N, D_CHUNK, BLOCK_DV)

    dk_base = DK + bq * stride_dkb + off_hk * stride_dkh + (start_k + start_n) * stride_dkn
    dv_base = DV + bq * stride_dvb + off_hk * stride_dvh + (start_k + start_n) * stride_dvn
    tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_dv[None, :] * stride_dkd,
             (dk * sm_scale).to(DK.dtype.element_ty), mask=out_ok)
    tl.store(dv_base + offs_n[:, None] * stride_dvn + offs_dv[None, :] * stride_dvd, dv.to(DV.dtype.element_ty),
             mask=out_ok)


@triton.jit
def _dq_loop(dq, q, do, q_base, do_base, lse2, lse_lo, delta, k_base, v_base, lo, hi, full_lo, full_hi, rows, offs_m,
             offs_n, offs_d, offs_dv, dv_ok, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope,
             mask_base, stride_qm, stride_qd, stride_dom, stride_dod, stride_kn, stride_kd, stride_vn, stride_vd,
             stride_mm, stride_mn, dropout_p, seed, rng_offset, off_b, off_h, num_heads, max_q, max_k,
             CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
             MASK_MODE: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, D_CHUNK: tl.constexpr,
             BLOCK_DV: tl.constexpr):
    """dQ contributions of key blocks ``lo, lo + BLOCK_N, ... < hi`` to one resident query block;
    ``[full_lo, full_hi)`` interior, as in :func:`_fwd_loop`. ``D_CHUNK < BLOCK_D`` (fp32 at head
    dims above 128): ``q`` and ``do`` are not held, Q K^T and dO V^T are summed over head-dim
    chunks read as they are used (:func:`_dot_chunked`), and ``dq`` holds the ``BLOCK_DV``
    columns ``offs_dv`` only."""
    d_ok = offs_d < HEAD_DIM
    r_ok = rows < seqlen_q
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_off = tl.cast(start_n, tl.int64)
        if D_CHUNK < BLOCK_D:  # the columns of dQ = dS K this program writes; Q K^T and dO V^T by chunks
            k = tl.load(k_base + col_off * stride_kn + offs_n[:, None] * stride_kn + offs_dv[None, :] * stride_kd,
                        mask=(cols < seqlen_k)[:, None] & dv_ok[None, :], other=0.0)
            v = k
        else:
            if HEAD_DIM == BLOCK_D:
                kv_ok = (cols < seqlen_k)[:, None]  # one predicate a key
            else:
                kv_ok = (cols < seqlen_k)[:, None] & d_ok[None, :]
            k = tl.load(k_base + col_off * stride_kn + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                        mask=kv_ok, other=0.0)
            v = tl.load(v_base + col_off * stride_vn + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                        mask=kv_ok, other=0.0)
        qk = _dot_t(q, k, q_base, stride_qm, stride_qd, offs_m, r_ok, k_base + col_off * stride_kn, stride_kn, stride_kd,
                    offs_n, cols < seqlen_k, HEAD_DIM, BLOCK_D, D_CHUNK, DOT_PRECISION, BLOCK_M, BLOCK_N)
        p, t = _bwd_probs(qk, (start_n >= full_lo) & (start_n < full_hi), lse2, lse_lo, rows, cols, seqlen_q, seqlen_k,
                          off, window_left, window_right, qk_scale, cap, slope, mask_base, stride_mm, stride_mn, CAUSAL,
                          WINDOW, SOFTCAP, ALIBI, MASK_MODE)
        dp = _dot_t(do, v, do_base, stride_dom, stride_dod, offs_m, r_ok, v_base + col_off * stride_vn, stride_vn,
                    stride_vd, offs_n, cols < seqlen_k, HEAD_DIM, BLOCK_D, D_CHUNK, DOT_PRECISION, BLOCK_M, BLOCK_N)
        if DROPOUT:
            keep = _dropout_keep(seed, rng_offset, dropout_p, off_b, off_h, num_heads, max_q, max_k, rows, cols)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=_configs("bwd_dq"), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune("bwd_dq")})
@triton.jit
def _attn_bwd_dq(
    Q, K, V, DOut, LSE, LseLo, Delta, DQ, CuSeqQ, CuSeqK, Alibi, Mask,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_lb, stride_lh, stride_lm,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_ab, stride_ah,
    stride_mb, stride_mh, stride_mm, stride_mn,
    seqlen_q, seqlen_k, kv_group, sm_scale, softcap, window_left, window_right,
    dropout_p, seed, rng_offset, num_heads, seq_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    ALIBI: tl.constexpr, MASK_MODE: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, D_CHUNK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ of one query block, by its own pass over key blocks: no atomics, a fixed summation order."""
    max_q, max_k = seqlen_q, seqlen_k  # the dropout counter space (varlen: the longest sequence)
    off_b, off_h, off_hk, bq, start_q, seqlen_q, start_k, seqlen_k, off, start_m, dv0 = _row_program(
        CuSeqQ, CuSeqK, seqlen_q, seqlen_k, kv_group, CAUSAL, VARLEN, BOTTOM_RIGHT, BLOCK_M, BLOCK_D, BLOCK_DV)
    if start_m >= seqlen_q:  # varlen: this sequence is shorter than the longest one
        return

    offs_m, offs_n, offs_d, d_ok = _tile_offsets(HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    offs_dv, dv_ok = _dv_offsets(offs_d, d_ok, dv0, HEAD_DIM, BLOCK_D, BLOCK_DV)
    rows = start_m + offs_m
    q_ok = (rows[:, None] < seqlen_q) & d_ok[None, :]

    row0 = start_q + start_m
    q_base = Q + bq * stride_qb + off_h * stride_qh + row0 * stride_qm
    do_base = DOut + bq * stride_dob + off_h * stride_doh + row0 * stride_dom
    if D_CHUNK == BLOCK_D:
        out_ok = q_ok
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod, mask=q_ok, other=0.0)
    else:  # the loop reads Q and dO by head-dim chunks
        out_ok = (rows[:, None] < seqlen_q) & dv_ok[None, :]
        q = q_base
        do = do_base
    l_base = bq * stride_lb + off_h * stride_lh + row0 * stride_lm
    # Rows past the end read lse = +inf, so their P is exactly 0 in every block, interior or not.
    lse2, lse_lo = _lse_rows(LSE + l_base + offs_m * stride_lm, LseLo + l_base + offs_m * stride_lm, rows < seqlen_q,
                             MASK_MODE)
    delta = tl.load(Delta + l_base + offs_m * stride_lm, mask=rows < seqlen_q, other=0.0)

    k_base = K + bq * stride_kb + off_hk * stride_kh + start_k * stride_kn
    v_base = V + bq * stride_vb + off_hk * stride_vh + start_k * stride_vn
    qk_scale, cap = _score_scale(sm_scale, softcap, SOFTCAP)
    slope, mask_base = _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI,
                                      MASK_MODE)

    lo, hi, full_lo, full_hi = _key_ranges(start_m, seqlen_k, off, window_left, window_right, BLOCK_M, BLOCK_N,
                                           CAUSAL, WINDOW)
    dq = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    dq = _dq_loop(dq, q, do, q_base, do_base, lse2, lse_lo, delta, k_base, v_base, lo, hi, full_lo, full_hi, rows,
                  offs_m, offs_n, offs_d, offs_dv, dv_ok, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale,
                  cap, slope, mask_base, stride_qm, stride_qd, stride_dom, stride_dod, stride_kn, stride_kd, stride_vn,
                  stride_vd, stride_mm, stride_mn, dropout_p, seed, rng_offset, off_b, off_h, num_heads, max_q, max_k,
                  CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE, DROPOUT, DOT_PRECISION, HEAD_DIM, BLOCK_D, BLOCK_N,
                  BLOCK_M, D_CHUNK, BLOCK_DV)

    tl.store(DQ + bq * stride_dqb + off_h * stride_dqh + row0 * stride_dqm
             + offs_m[:, None] * stride_dqm + offs_dv[None, :] * stride_dqd,
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=out_ok)


# --------------------------------------------------------------------------- launchers


# The jitted kernels behind each autotuner, looked up at prune time (they are defined after _prune).
_JIT = {"fwd": lambda: _attn_fwd.fn, "bwd_dkdv": lambda: _attn_bwd_dkdv.fn, "bwd_dq": lambda: _attn_bwd_dq.fn}
_KERNELS = {"fwd": ("fwd",), "bwd": ("bwd_dkdv", "bwd_dq")}


def supports(q, k, v, *, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None, args=None,
             direction="fwd"):
    """``None`` when these kernels compute this call exactly, else why not (so dispatch falls back).
    ``direction`` ("fwd" or "bwd") names the kernels whose tiles must exist on this GPU."""
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} (fp16, bf16 and fp32 only)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return "q, k and v must share one dtype"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "4-D (B, H, L, D) inputs only"
    d = q.shape[-1]
    if not 1 <= d <= 256:
        return f"head dim {d} (1 to 256 only)"
    if q.is_cuda and not INTERPRET:
        arch = _arch()
        bd, elem = block_d(d), q.element_size()
        features = attn_mask is not None or alibi_slopes is not None or (args is not None and (
            args.has_window or args.softcap > 0 or args.dropout_p > 0))
        for kernel in _KERNELS[direction]:
            chunked = head_dim_split(bd, elem, kernel, features)[0] < bd
            if not any(fits_smem(kernel, c, arch, bd, elem) for c in candidates(kernel, chunked)):
                return f"no {kernel} tile for head dim {d} in {q.dtype} fits sm_{arch}'s shared memory"
    if k.shape[-1] != d or v.shape[-1] != d:
        return "a value head dim unlike the query's"
    if q.shape[1] % k.shape[1] != 0 or v.shape[1] != k.shape[1]:
        return "query heads must be a multiple of key/value heads"
    if attn_mask is not None:
        if cu_seqlens_q is not None:
            return "attn_mask with varlen"
        if attn_mask.dtype not in (torch.bool, torch.float16, torch.bfloat16, torch.float32):
            return f"attn_mask dtype {attn_mask.dtype}"
        if attn_mask.dim() > 4:
            return "attn_mask of more than 4 dims"
    if alibi_slopes is not None and alibi_slopes.dim() not in (1, 2):
        return "alibi_slopes must be (H,) or (B, H)"
    return None


def _mask_args(attn_mask, q, k):
    """(tensor, MASK_MODE, 4 strides) for an attn_mask broadcast to (B, H, Lq, Lk) by zero strides."""
    if attn_mask is None:
        return q, 0, (0, 0, 0, 0)
    m = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return m, (1 if m.dtype == torch.bool else 2), tuple(m.stride())


def _alibi_args(alibi_slopes, q):
    if alibi_slopes is None:
        return q, False, (0, 0)
    a = alibi_slopes if alibi_slopes.dim() == 2 else alibi_slopes.unsqueeze(0)
    return a, True, (a.stride(0) if a.shape[0] > 1 else 0, a.stride(1))


def _common(q, k, args, attn_mask, alibi_slopes, cu_seqlens_q, cu_seqlens_k):
    """Scalars, feature flags and the grid extent shared by every kernel of one call."""
    from fastattn.attention_args import problem_extent

    varlen = cu_seqlens_q is not None
    # lq/lk also lay out the dropout counters, so they come from the one shared definition.
    batch, heads, lq, lk = problem_extent(q, k, args, cu_seqlens_q, cu_seqlens_k)
    window = args.window_left >= 0 or (args.window_right >= 0 and not args.causal)
    wl = args.window_left if args.window_left >= 0 else _FAR
    wr = 0 if args.causal else (args.window_right if args.window_right >= 0 else _FAR)
    mask, mask_mode, mask_strides = _mask_args(attn_mask, q, k)
    alibi, has_alibi, alibi_strides = _alibi_args(alibi_slopes, q)
    cu_q = cu_seqlens_q if varlen else q
    cu_k = cu_seqlens_k if varlen else q
    dropout = args.dropout_p > 0
    scalars = (lq, lk, q.shape[1] // k.shape[1], float(args.scale), float(args.softcap), wl, wr,
               float(args.dropout_p), int(args.seed) if dropout else 0, int(args.offset) if dropout else 0, heads,
               seq_bucket(lq, lk))
    flags = dict(
        HEAD_DIM=q.shape[-1], BLOCK_D=block_d(q.shape[-1]), CAUSAL=bool(args.causal),
        BOTTOM_RIGHT=bool(args.bottom_right), WINDOW=window, SOFTCAP=args.softcap > 0, ALIBI=has_alibi,
        MASK_MODE=mask_mode, VARLEN=varlen, DROPOUT=dropout,
        # fp32 inputs: tf32x3 (three tf32 tensor-core products, hi*hi + hi*lo + lo*hi) keeps ~fp32
        # accuracy where plain tf32 costs ~1e-3 relative; "ieee" would run on FMA units with the
        # whole tile in registers (it spills at every useful tile size).
        DOT_PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32",
    )
    flags["D_CHUNK"], flags["BLOCK_DV"] = head_dim_split(flags["BLOCK_D"], q.element_size())
    return batch, lq, lk, (cu_q, cu_k, alibi, mask), alibi_strides + mask_strides, scalars, flags


def attention_fwd(q, k, v, args, *, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                  path: str = "auto"):
    """Attention forward.

    Args:
        q: ``(B, Hq, Lq, D)``; k, v: ``(B, Hk, Lk, D)``, ``Hq % Hk == 0``; any strides.
            Varlen: ``B == 1`` and ``cu_seqlens_q``/``cu_seqlens_k`` int32 ``(n + 1,)`` pack
            ``n`` sequences along L.
        args: :class:`fastattn.attention_args.AttentionArgs` (scale, causal, alignment,
            window, softcap; ``dropout_p`` must be 0).
        attn_mask: bool (True = takes part) or float (added), broadcastable to ``(B, Hq, Lq, Lk)``.
        alibi_slopes: fp32 ``(Hq,)`` or ``(B, Hq)``.
        path: ``"auto"`` (the TMA kernel of :mod:`.attention_tma` where
            :func:`~.attention_tma.uses_tma` says so: Hopper GPUs; else the pointer kernel),
            ``"tma"`` or ``"pointer"`` to force one (``"tma"`` raises ``ValueError`` for what it
            cannot serve; the interpreter runs both).

    Returns:
        ``out`` ``(B, Hq, Lq, D)`` in q's dtype and dim order, ``lse`` fp32 ``(B, Hq, Lq)``
        (natural log; ``+inf`` where a row sees no key).
    """
    from fastattn.attention_args import empty_like_layout

    if path not in ("auto", "tma", "pointer"):
        raise ValueError(f"path must be 'auto', 'tma' or 'pointer', got {path!r}")
    ensure_interpreter_fixes()
    batch, lq, lk, ptrs, extra_strides, scalars, flags = _common(q, k, args, attn_mask, alibi_slopes,
                                                                 cu_seqlens_q, cu_seqlens_k)
    out = empty_like_layout(q, v.shape[-1])
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    if out.numel() == 0 or lk == 0 or batch == 0:  # nothing to launch; rows without keys: 0 and +inf
        return out.zero_(), lse.fill_(float("inf"))
    if path == "tma":
        why = attention_tma.unsupported_reason(q, k, v, out, varlen=flags["VARLEN"])
        if why is not None:
            raise ValueError(f"attention_fwd(path='tma'): {why}")
    if path == "tma" or (path == "auto" and attention_tma.uses_tma(
            q, k, v, out, arch=_arch(), on_gpu=q.is_cuda and not INTERPRET, varlen=flags["VARLEN"])):
        # Hopper: the same math with Q/K/V/O moved by TMA and the interior loop on its own.
        attention_tma.launch_fwd_tma(q, k, v, out, lse, ptrs, extra_strides, scalars, flags)
        return out, lse
    heads, splits = q.shape[1], flags["BLOCK_D"] // flags["BLOCK_DV"]
    grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]) * splits, heads, batch)
    _attn_fwd[grid](
        q, k, v, out, lse, *ptrs,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(), *extra_strides,
        *scalars, **flags,
    )
    return out, lse


def attention_bwd(dout, q, k, v, out, lse, args, *, attn_mask=None, alibi_slopes=None, cu_seqlens_q=None,
                  cu_seqlens_k=None, mask_grad=False, path: str = "auto"):
    """Attention backward: ``(dq, dk, dv)`` shaped and laid out like ``q``, ``k``, ``v``.

    ``dout``/``out`` ``(B, Hq, Lq, D)`` and ``lse`` fp32 ``(B, Hq, Lq)`` from :func:`attention_fwd`
    with the same arguments. ``args.deterministic`` selects the atomics-free dQ pass.
    ``mask_grad`` (a float ``attn_mask`` only): also return the gradient of the mask as a
    fourth result, ``(B, Hq, Lq, Lk)`` in the mask's dtype (the gradient of the mask as
    broadcast; autograd sums it back to the mask's own shape). ``path``: ``"auto"`` (the TMA
    kernels of :mod:`.attention_tma_bwd` where :func:`~.attention_tma_bwd.uses_tma` says so:
    Hopper GPUs; else the pointer kernels), ``"tma"`` or ``"pointer"`` to force one (``"tma"``
    raises ``ValueError`` for what it cannot serve; the interpreter runs both).
    """
    if path not in ("auto", "tma", "pointer"):
        raise ValueError(f"path must be 'auto', 'tma' or 'pointer', got {path!r}")
    ensure_interpreter_fixes()
    batch, lq, lk, ptrs, extra_strides, scalars, flags = _common(q, k, args, attn_mask, alibi_slopes,
                                                                 cu_seqlens_q, cu_seqlens_k)
    hq, hk = q.shape[1], k.shape[1]
    dmask = None
    if mask_grad:
        # fp32 and zero-filled: blocks the causal mask or the window skip have no gradient.
        dmask = torch.zeros(q.shape[0], hq, q.shape[2], k.shape[2], dtype=torch.float32, device=q.device)
    if q.numel() == 0 or k.numel() == 0 or batch == 0:
        grads = (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v))
        return grads + (dmask.to(attn_mask.dtype),) if mask_grad else grads
    bd, hd = flags["BLOCK_D"], flags["HEAD_DIM"]
    delta = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    bm = delta_block_m(bd)
    _attn_bwd_delta[(triton.cdiv(q.shape[2], bm), hq, q.shape[0])](
        out, dout, delta, *out.stride(), *dout.stride(), *delta.stride(), q.shape[2],
        HEAD_DIM=hd, BLOCK_D=bd, BLOCK_M=bm,
    )
    lse = lse if lse.stride() == delta.stride() else lse.contiguous()  # the kernels share LSE/Delta strides
    lse_lo = lse  # read only under an additive mask
    if flags["MASK_MODE"] == 2:
        # The backward reads P = exp2((s - max) - log2(sum)) from exact base-2 row statistics:
        # one extra Q K^T pass, only for additive masks (see _attn_bwd_rowstats).
        lse, lse_lo = torch.empty_like(delta), torch.empty_like(delta)
        rbm, rbn, rwarps = rowstats_tile(bd, q.element_size())
        mask_t, alibi_t = ptrs[3], ptrs[2]
        _attn_bwd_rowstats[(triton.cdiv(q.shape[2], rbm), hq, q.shape[0])](
            q, k, alibi_t, mask_t, lse, lse_lo, *q.stride(), *k.stride(), *delta.stride(), *extra_strides,
            *scalars[:7], HEAD_DIM=hd, BLOCK_D=bd, CAUSAL=flags["CAUSAL"], BOTTOM_RIGHT=flags["BOTTOM_RIGHT"],
            WINDOW=flags["WINDOW"], SOFTCAP=flags["SOFTCAP"], ALIBI=flags["ALIBI"],
            DOT_PRECISION=flags["DOT_PRECISION"], D_CHUNK=flags["D_CHUNK"], BLOCK_M=rbm, BLOCK_N=rbn,
            num_warps=rwarps, num_stages=2,
        )
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    atomic = not args.deterministic
    # Atomic dQ accumulates in fp32 (low-precision atomics would round at every add).
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if atomic else dq
    if path == "tma":
        why = attention_tma_bwd.unsupported_reason(q, k, v, out, dout, varlen=flags["VARLEN"])
        if why is not None:
            raise ValueError(f"attention_bwd(path='tma'): {why}")
    if path == "tma" or (path == "auto" and attention_tma_bwd.uses_tma(
            q, k, v, out, dout, arch=_arch(), on_gpu=q.is_cuda and not INTERPRET, varlen=flags["VARLEN"])):
        # Hopper: the same math with the tiles moved by TMA and the interior loops on their own.
        attention_tma_bwd.launch_bwd_tma(q, k, v, dout, lse, lse_lo, delta, dq, dk, dv, dq_acc if atomic else None,
                                         dmask, ptrs, extra_strides, scalars, flags)
        return (dq, dk, dv, dmask.to(attn_mask.dtype)) if mask_grad else (dq, dk, dv)
    # fp32 above 128 (and at 128 with features): the backward's own chunking (head_dim_split).
    flags["D_CHUNK"], flags["BLOCK_DV"] = head_dim_split(bd, q.element_size(), "bwd_dkdv", _has_features(flags))
    splits = bd // flags["BLOCK_DV"]  # programs per block, one per head-dim slice
    grid = lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]) * splits, hk, batch)
    _attn_bwd_dkdv[grid](
        q, k, v, dout, lse, lse_lo, delta, dk, dv, dq_acc, *ptrs, dmask if mask_grad else q,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse.stride(),
        *dk.stride(), *dv.stride(), *dq_acc.stride(), *extra_strides,
        *(dmask.stride() if mask_grad else (0, 0, 0, 0)),
        *scalars, ATOMIC_DQ=atomic, MASK_GRAD=bool(mask_grad), **flags,
    )
    if atomic:
        dq.copy_(dq_acc)
    else:
        grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]) * splits, hq, batch)
        _attn_bwd_dq[grid](
            q, k, v, dout, lse, lse_lo, delta, dq, *ptrs,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse.stride(), *dq.stride(),
            *extra_strides, *scalars, **flags,
        )
    if mask_grad:
        return dq, dk, dv, dmask.to(attn_mask.dtype)
    return dq, dk, dv


# --------------------------------------------------------------------------- ahead-of-time cases

_AOT_DTYPES = {"fp16": 2, "fp32": 4}  # bf16 compiles to the same tiles and register footprint as fp16
_AOT_BLOCK_D = (16, 32, 64, 128, 256)
# Specialisations checked: the common launch (causal) for every tile and dtype; every feature
# at once (window, softcap, ALiBi, additive mask, bottom-right, mask gradient) and dropout for
# the large tiles, where the extra per-element work is most likely to spill; varlen with every
# feature as flash_attn_varlen_func launches it; the plain (non-causal) launch with the
# deterministic backward; a bool mask. ``ATOMIC_DQ``/``MASK_GRAD`` only exist in dK/dV.
_AOT_VARIANTS = {
    "causal": (dict(CAUSAL=True), tuple(_AOT_DTYPES), _AOT_BLOCK_D),
    "features": (dict(CAUSAL=True, BOTTOM_RIGHT=True, WINDOW=True, SOFTCAP=True, ALIBI=True, MASK_MODE=2,
                      MASK_GRAD=True), ("fp16", "fp32"), (128, 256)),
    # Dropout's Philox rounds hold four 32-bit words per element: the register-heaviest feature.
    "dropout": (dict(CAUSAL=True, DROPOUT=True), ("fp16", "fp32"), (64, 128, 256)),
    "varlen": (dict(CAUSAL=True, BOTTOM_RIGHT=True, VARLEN=True, WINDOW=True, SOFTCAP=True, ALIBI=True,
                    DROPOUT=True), ("fp16", "fp32"), (64, 128)),
    "plain-deterministic": (dict(ATOMIC_DQ=False), ("fp16",), (64, 128)),
    "bool-mask": (dict(MASK_MODE=1), ("fp16",), (128,)),
}
_FEATURE_FLAGS = ("WINDOW", "SOFTCAP", "ALIBI", "MASK_MODE", "DROPOUT")  # as supports() counts them
# The specialisations compiled by default (tests/test_triton_aot.py outside the slow set): every
# variant, kernel and head-dim tile at least once, chosen once and for all (the first of each
# variant's (dtype, tile) list, the causal launch at every tile in fp16, fp32 at 64, and the
# head-dim-chunked path (fp32 at 256, every feature: its few 16-row candidates compile in seconds);
# the slow test and ``info --kernels`` compile them all.
_AOT_STRATIFIED = {("causal", "fp16", bd) for bd in _AOT_BLOCK_D} | {("causal", "fp32", 64), ("features", "fp32", 256)}
_AOT_STRATIFIED |= {(variant, dtypes[0], tiles[0]) for variant, (_, dtypes, tiles) in _AOT_VARIANTS.items()}


def aot_on_every_arch(case) -> bool:
    """Whether CI's stratified AOT run compiles ``case`` for both sm_80 and sm_90 (the other
    specialisations take one arch each, alternating): the plain causal 16-bit launch, whose
    surviving tiles are pinned per arch (tests/test_triton_aot.py ANCHORS), and the fixed-tile
    delta pass."""
    return case.config.get("variant") in ("causal", "delta") and case.config.get("dtype") != "fp32"


def aot_variant_has_features(variant: str) -> bool:
    """Whether the AOT variant ``variant`` turns on a feature (window, softcap, ALiBi, mask, dropout)."""
    return variant in _AOT_VARIANTS and any(_AOT_VARIANTS[variant][0].get(f) for f in _FEATURE_FLAGS)


def aot_specialisations(stratified: bool = False) -> list:
    """Every (variant, dtype name, head-dim tile) the AOT check compiles (``stratified``: the
    default subset)."""
    out = []
    for variant, (_, dtypes, tiles) in _AOT_VARIANTS.items():
        for dname in dtypes:
            for bd in tiles:
                if stratified and (variant, dname, bd) not in _AOT_STRATIFIED:
                    continue
                out.append((variant, dname, bd))
    return out


def aot_cases(stratified: bool = False) -> list:
    """Every (kernel, candidate config, specialisation) the autotuner can compile, for
    fastattn/buildcheck/triton_aot.py: each candidate of :data:`_CANDIDATES` in each specialisation of
    :func:`aot_specialisations`, for every arch, grouped by specialisation (the compiler's report,
    not a rule, says which survive: :func:`select_compiled`), plus the fixed-tile delta and
    row-statistics passes.

    Specialised as the common launch is: unit head-dim strides, 16-byte aligned pointers
    and strides; feature flags per :data:`_AOT_VARIANTS`. Then the Hopper TMA forward's cases
    (:func:`_tma_aot_cases`).
    """
    from ._configs import AotCase, signature_for

    fns = {"fwd": _attn_fwd.fn, "bwd_dkdv": _attn_bwd_dkdv.fn, "bwd_dq": _attn_bwd_dq.fn}
    pointer_types = {"LSE": "*fp32", "LseLo": "*fp32", "Delta": "*fp32", "DQAcc": "*fp32", "CuSeqQ": "*i32",
                     "CuSeqK": "*i32", "Alibi": "*fp32", "DMask": "*fp32", "Hi": "*fp32", "Lo": "*fp32"}
    cases = []

    def divisible(fn, const):
        return tuple(n for n in fn.arg_names if n not in const and (n[0].isupper() or n.startswith("stride")))

    for variant, dname, bd in aot_specialisations(stratified):
        on = _AOT_VARIANTS[variant][0]
        elem = _AOT_DTYPES[dname]
        features = aot_variant_has_features(variant)
        flags = dict(HEAD_DIM=bd, BLOCK_D=bd, CAUSAL=False, BOTTOM_RIGHT=False, WINDOW=False, SOFTCAP=False,
                     ALIBI=False, MASK_MODE=0, VARLEN=False, DROPOUT=False,
                     DOT_PRECISION="tf32x3" if dname == "fp32" else "tf32")
        flags.update((name, value) for name, value in on.items() if name not in ("ATOMIC_DQ", "MASK_GRAD"))
        mask_type = "*i1" if on.get("MASK_MODE") == 1 else f"*{dname}"
        for kernel, fn in fns.items():
            chunk, dv = head_dim_split(bd, elem, kernel, features)
            for cfg in candidates(kernel, chunked=chunk < bd):
                const = dict(flags, D_CHUNK=chunk, BLOCK_DV=dv, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"])
                if kernel == "bwd_dkdv":
                    const["ATOMIC_DQ"] = on.get("ATOMIC_DQ", True)
                    const["MASK_GRAD"] = on.get("MASK_GRAD", False)
                # Triton's launcher turns an int argument equal to 1 into a constant: unit strides
                # (not the mask's, which broadcasts with stride 0 or runs along keys).
                const.update({n: 1 for n in fn.arg_names if n.startswith("stride") and n.endswith("d")})
                sig = signature_for(fn, dict(pointer_types, Mask=mask_type), f"*{dname}",
                                    floats=("sm_scale", "softcap", "dropout_p"), int64s=("seed", "rng_offset"),
                                    constexprs=const)
                cases.append(AotCase(
                    kernel=f"attention_{kernel}", fn=fn, signature=sig, constexprs=const,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], maxnreg=cfg.get("maxnreg"),
                    config=dict(variant=variant, dtype=dname, BLOCK_D=bd, BLOCK_M=cfg["BLOCK_M"],
                                BLOCK_N=cfg["BLOCK_N"]),
                    divisible_by_16=divisible(fn, const), group=(kernel, variant, dname, bd),
                ))
        if on.get("MASK_MODE") == 2:  # the row-statistics pass of the additive-mask backward
            fn = _attn_bwd_rowstats
            bm, bn, warps = rowstats_tile(bd, elem)
            const = {k: v for k, v in flags.items() if k in fn.arg_names}
            const.update(D_CHUNK=head_dim_split(bd, elem)[0], BLOCK_M=bm, BLOCK_N=bn, stride_qd=1, stride_kd=1)
            cases.append(AotCase(
                kernel="attention_bwd_rowstats", fn=fn, signature=signature_for(
                    fn, dict(pointer_types, Mask=mask_type), f"*{dname}", floats=("sm_scale", "softcap"),
                    constexprs=const),
                constexprs=const, num_warps=warps, num_stages=2,
                config=dict(variant=variant, dtype=dname, BLOCK_D=bd, BLOCK_M=bm, BLOCK_N=bn),
                divisible_by_16=divisible(fn, const),
            ))
    for dname in _AOT_DTYPES:  # the delta preprocess: one launch shape per head-dim tile
        for bd in _AOT_BLOCK_D:
            fn = _attn_bwd_delta
            const = dict(HEAD_DIM=bd, BLOCK_D=bd, BLOCK_M=delta_block_m(bd), stride_od=1, stride_dd=1)
            cases.append(AotCase(
                kernel="attention_bwd_delta", fn=fn, signature=signature_for(
                    fn, {"Delta": "*fp32"}, f"*{dname}", constexprs=const),
                constexprs=const, num_warps=4, num_stages=1,
                config=dict(variant="delta", dtype=dname, BLOCK_D=bd, BLOCK_M=delta_block_m(bd)),
                divisible_by_16=divisible(fn, const),
            ))
    return cases + _tma_aot_cases(stratified)


# The default test run compiles, for sm_90: the TMA forward's plain causal launch and every
# feature at once (each candidate of both); the TMA backward's dK/dV in the plain causal launch
# (atomic dQ) and its dQ pass in the deterministic one. The slow test and ``info --kernels``
# compile every specialisation of each.
_AOT_STRATIFIED_TMA = {
    "fwd_tma": {("causal", "fp16", 64), ("features", "fp16", 128)},
    "bwd_dkdv_tma": {("causal", "fp16", 64)},
    "bwd_dq_tma": {("plain-deterministic", "fp16", 64)},
}
# Each TMA kernel: its jitted function (looked up when the cases are built), its candidate set,
# and the descriptors whose block is a row (BLOCK_M) or a key (BLOCK_N) tile.
_TMA_KERNELS = {
    "fwd_tma": (lambda: attention_tma._attn_fwd_tma.fn, "fwd", ("desc_q", "desc_o"), ("desc_k", "desc_v")),
    "bwd_dkdv_tma": (lambda: attention_tma_bwd._attn_bwd_dkdv_tma.fn, "bwd_dkdv_tma",
                     ("desc_q", "desc_do", "desc_dq"), ("desc_k", "desc_v", "desc_dk", "desc_dv")),
    "bwd_dq_tma": (lambda: attention_tma_bwd._attn_bwd_dq_tma.fn, "bwd_dq_tma", ("desc_q", "desc_do", "desc_dq"),
                   ("desc_k", "desc_v")),
}


# The TMA backward serves head dims up to 64, where the lists of _AOT_VARIANTS have no feature
# case: it also compiles every feature at once and a bool mask there.
_TMA_BWD_EXTRA = (("features", "fp16", 64), ("bool-mask", "fp16", 64))


def _tma_max_head_dim(kernel: str, elem: int) -> int:
    """The widest head dim the TMA kernel ``kernel`` serves for ``elem``-byte elements."""
    widest = attention_tma.TMA_MAX_HEAD_DIM[elem]
    return widest if kernel == "fwd_tma" else min(widest, attention_tma_bwd.TMA_BWD_MAX_HEAD_DIM.get(elem, 0))


def _tma_aot_cases(stratified: bool) -> list:
    """The TMA forward (:mod:`.attention_tma`) and backward (:mod:`.attention_tma_bwd`) in the
    specialisations of :func:`aot_specialisations` they serve (not varlen, head dims up to
    ``TMA_MAX_HEAD_DIM``) with every candidate config, for sm_90 only (the only arch that
    launches them)."""
    from ._configs import AotCase, signature_for

    cases = []
    for kernel, (jit_fn, candidates_of, row_descs, key_descs) in _TMA_KERNELS.items():
        fn = jit_fn()
        for variant, dname, bd in aot_specialisations() + ([] if kernel == "fwd_tma" else list(_TMA_BWD_EXTRA)):
            on = _AOT_VARIANTS[variant][0]
            if (on.get("VARLEN") or bd > _tma_max_head_dim(kernel, _AOT_DTYPES[dname])
                    or (stratified and (variant, dname, bd) not in _AOT_STRATIFIED_TMA[kernel])):
                continue
            flags = dict(HEAD_DIM=bd, BLOCK_D=bd, CAUSAL=False, BOTTOM_RIGHT=False, WINDOW=False, SOFTCAP=False,
                         ALIBI=False, MASK_MODE=0, VARLEN=False, DROPOUT=False,
                         DOT_PRECISION="tf32x3" if dname == "fp32" else "tf32")
            flags.update((name, value) for name, value in on.items() if name in flags)
            if kernel == "bwd_dkdv_tma":
                flags.update(ATOMIC_DQ=on.get("ATOMIC_DQ", True), MASK_GRAD=on.get("MASK_GRAD", False))
            mask_type = "*i1" if on.get("MASK_MODE") == 1 else f"*{dname}"
            for cfg in _CANDIDATES[candidates_of]:
                bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
                const = dict(flags, BLOCK_M=bm, BLOCK_N=bn)
                sig = signature_for(fn, {"LSE": "*fp32", "LseLo": "*fp32", "Delta": "*fp32", "DQAcc": "*fp32",
                                         "DMask": "*fp32", "Alibi": "*fp32", "Mask": mask_type}, f"*{dname}",
                                    floats=("sm_scale", "softcap", "dropout_p"), int64s=("seed", "rng_offset"),
                                    constexprs=const)
                for names, rows in ((row_descs, bm), (key_descs, bn)):
                    for name in names:
                        # Atomic dQ reduces into an fp32 buffer.
                        elem = "fp32" if name == "desc_dq" and flags.get("ATOMIC_DQ") else dname
                        sig[name] = f"tensordesc<{elem}[1,1,{rows},{bd}]>"
                cases.append(AotCase(
                    kernel=f"attention_{kernel}", fn=fn, signature=sig, constexprs=const,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], maxnreg=cfg.get("maxnreg"),
                    config=dict(variant=variant, dtype=dname, BLOCK_D=bd, BLOCK_M=bm, BLOCK_N=bn),
                    divisible_by_16=tuple(n for n in fn.arg_names if n not in const and not n.startswith("desc")
                                          and (n[0].isupper() or n.startswith("stride"))),
                    archs=(90,), group=(kernel, variant, dname, bd),
                ))
    return cases


def kept_in_reports(records: list, arch: str, smem_limit: Optional[int] = None) -> dict:
    """What :func:`select_compiled` keeps, per specialisation, from ahead-of-time records of
    :func:`aot_cases` on ``arch`` ("sm_80"): ``{(kernel, variant, dtype, BLOCK_D): [config, ...]}``
    (``smem_limit``: another arch's shared memory per block, e.g. sm_86's against sm_80 code)."""
    from ._configs import shared_memory_limit

    limit = smem_limit if smem_limit is not None else shared_memory_limit(int(arch[3:]))
    groups: dict = {}
    for r in records:
        c = r["config"]
        if r["arch"] != arch or c.get("variant") == "delta" or r["kernel"] == "attention_bwd_rowstats":
            continue
        key = (r["kernel"], c["variant"], c["dtype"], c["BLOCK_D"])
        report = None if r["error"] else (r["shared_memory_bytes"], r["spill_bytes"])
        groups.setdefault(key, ([], []))
        groups[key][0].append(c)
        groups[key][1].append(report)
    return {key: select_compiled(cfgs, reports, limit) for key, (cfgs, reports) in groups.items()}
