"""What the pointer attention kernels (:mod:`.attention`) and the Hopper TMA forward
(:mod:`.attention_tma`) share: the candidate tiles and the autotuning key, the compiler report
the autotuners prune by, and the device helpers of the online softmax (scores with every
feature, dropout's keep mask, the visited/interior key ranges of a row block). The math is
described in :mod:`.attention`'s docstring. Imports nothing of fastattn."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRET", "SMEM_LIMIT", "kernel_configs", "seq_bucket"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634  # exp(x) = exp2(x * LOG2E); host-side (the jitted helpers write the literal)

# Shared memory per block (opt-in maximum), bytes, per compute capability.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def _arch() -> int:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor
    return 80


# Candidates: the tiles fast Triton attention kernels use (Triton's fused-attention tutorial,
# FlashAttention-2), plus small tiles that serve the register-heavy specialisations (fp32's
# tf32x3 operands, head dim 256, every feature at once). On a GPU the autotuner compiles each for
# the exact specialisation launched and keeps those the compiler reports within shared memory
# and free of spills (select_compiled), then times the survivors; tests/test_triton_aot.py
# compiles them all for sm_80 and sm_90 ahead of time. Every backward tile streams its operands
# with num_stages >= 2 (cp.async double buffering: Q/dO in dK/dV, K/V in dQ).
_CANDIDATES = {
    "fwd": [
        dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 2), (64, 64, 4, 3), (32, 32, 4, 2),
                             (16, 32, 4, 2)]
    ],
    # 8-warp dK/dV tiles carry maxnreg=255: left alone, ptxas caps them at 128 registers (two
    # blocks a multiprocessor) and spills.
    "bwd_dkdv": [
        dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s, **({"maxnreg": 255} if w == 8 else {}))
        for bm, bn, w, s in [(64, 128, 8, 2), (32, 128, 4, 5), (64, 64, 4, 3), (32, 64, 4, 2), (16, 64, 4, 2),
                             (16, 32, 4, 2), (16, 32, 8, 2)]
    ],
    "bwd_dq": [
        dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 64, 8, 2), (128, 32, 4, 3), (64, 64, 4, 3), (32, 32, 4, 2), (16, 32, 4, 2)]
    ],
    # The Hopper backward (attention_tma_bwd): Q/dO (dK/dV) and K/V (dQ) arrive by TMA, and the
    # dK/dV loop computes the transposed tiles (keys x rows), so BLOCK_N keys are the wgmma's M
    # (64 a warpgroup): 128-key tiles on 4 and 8 warps, as the tutorial's backward. 16x32 (which
    # repeats MMA work 1.4x over its 4 warps) is the one that does not spill with every feature at
    # once at head dim 64; on 2 warps it spills.
    "bwd_dkdv_tma": [
        dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s, **({"maxnreg": 255} if w == 8 else {}))
        for bm, bn, w, s in [(64, 128, 8, 2), (32, 128, 4, 3), (64, 64, 4, 3), (32, 64, 4, 2), (16, 64, 4, 2), (16, 32, 4, 2)]
    ],
    "bwd_dq_tma": [
        dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 128, 8, 2), (128, 64, 8, 2), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2)]
    ],
}

# Under TRITON_INTERPRET=1 one small config per kernel: the autotuner would run every config
# on the (slow, numpy-backed) interpreter for each new key, and timings there mean nothing.
# BLOCK_M != BLOCK_N on purpose, so the causal block-range arithmetic is exercised with unequal tiles.
_INTERPRETER_CONFIG = {
    "fwd": dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1),
    "bwd_dkdv": dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=1),
    "bwd_dq": dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1),
    "bwd_dkdv_tma": dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=1),
    "bwd_dq_tma": dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=1),
}


# fp32 at head dims above 128 runs the head-dim-chunked path (attention.head_dim_split), where
# only 16-row tiles compile without spills (ptxas for sm_80 and sm_90a, every feature: 32-row
# ones spill 76-1800 bytes) and each large tile takes minutes to compile only to spill tens of
# kilobytes: the autotuner is offered these alone there.
_CHUNKED_TILES = {"fwd": {(16, 32, 4)}, "bwd_dkdv": {(16, 32, 4), (16, 32, 8)}, "bwd_dq": {(16, 32, 4)}}


def candidates(kernel: str, chunked: bool = False) -> list[dict]:
    """The candidate configs of ``kernel`` ("fwd", "bwd_dkdv", "bwd_dq"): every one, or
    (``chunked``) those of the head-dim-chunked path (fp32 above head dim 128)."""
    if not chunked:
        return list(_CANDIDATES[kernel])
    return [c for c in _CANDIDATES[kernel] if (c["BLOCK_M"], c["BLOCK_N"], c["num_warps"]) in _CHUNKED_TILES[kernel]]


def kernel_configs(kernel: str) -> list[dict]:
    """Every candidate config of ``kernel`` ("fwd", "bwd_dkdv", "bwd_dq") as plain dicts."""
    if INTERPRET:
        return [_INTERPRETER_CONFIG[kernel]]
    return list(_CANDIDATES[kernel])


def _compile_report(jit_fn, cfg: triton.Config, nargs: dict, kwargs: dict):
    """(shared memory bytes, spill bytes) of ``cfg`` compiled for the launch at hand (the very
    binary the autotuner would then run: Triton caches it), or None if it cannot be had."""
    try:
        compiled = jit_fn.warmup(*nargs.values(), grid=(1,), **kwargs, **cfg.all_kwargs())
        compiled._init_handles()
        return int(compiled.metadata.shared), int(compiled.n_spills)
    except Exception:  # noqa: BLE001  (no report: the config stays, the autotuner's launch decides)
        return None


# Autotuning keys: head dim, causal and its alignment (plus the dtypes, which Triton's autotuner
# always adds), the feature flags, which change the code and so the best (and the register-safe)
# tile, and a sequence-length bucket (an argument of its own, unused by the kernels' math).
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "BOTTOM_RIGHT", "WINDOW", "SOFTCAP", "ALIBI", "MASK_MODE", "VARLEN", "DROPOUT",
             "seq_bucket"]


def seq_bucket(seqlen_q: int, seqlen_k: int) -> int:
    """The sequence-length bucket of the autotuning key: the next power of two of the longer
    sequence, clamped to [128, 16384]. The best tile depends on the length (how many blocks fill
    the GPU, how much of the work is the causal diagonal) but not on its exact value, so a new
    length within a bucket does not retune."""
    return min(16384, max(128, triton.next_power_of_2(max(int(seqlen_q), int(seqlen_k), 1))))


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf in fp32 and runs in the interpreter.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _scores(qk, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right,
            qk_scale, softcap, slope, MaskBlk, stride_mm, stride_mn,
            EDGE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
            ALIBI: tl.constexpr, MASK_MODE: tl.constexpr):
    """Base-2 scores ``log2(e) * s`` of a (rows x cols) tile of raw ``q.k`` products, -inf where
    hidden. Also returns ``tanh`` of the softcapped scores (for the backward's chain rule).
    :func:`_scores_at` with the rows along the tile's first axis."""
    return _scores_at(qk, rows[:, None], cols[None, :], seqlen_q, seqlen_k, off, window_left, window_right, qk_scale,
                      softcap, slope, MaskBlk, stride_mm, stride_mn, EDGE, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE)


@triton.jit
def _scores_at(qk, ri, cj, seqlen_q, seqlen_k, off, window_left, window_right,
               qk_scale, softcap, slope, MaskBlk, stride_mm, stride_mn,
               EDGE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
               ALIBI: tl.constexpr, MASK_MODE: tl.constexpr):
    """Base-2 scores ``log2(e) * s`` of a tile of raw ``q.k`` products, -inf where hidden, and
    ``tanh`` of the softcapped scores (for the backward's chain rule). ``ri`` (query rows) and
    ``cj`` (keys) are 2-D and broadcast to the tile: ``rows[:, None]``, ``cols[None, :]`` for a
    (rows x keys) tile, ``rows[None, :]``, ``cols[:, None]`` for the transposed (keys x rows) one
    of the Hopper dK/dV kernel.

    ``EDGE``: the tile may hold keys past ``seqlen_k`` or outside the causal diagonal / window, so
    every element is compared; interior tiles (every key visible from every row) skip that work
    and only pay for the features (softcap, ALiBi, a mask) they use."""
    if SOFTCAP:
        # qk_scale is scale / softcap here; softcap is softcap * log2(e).
        t = _tanh(qk * qk_scale)
        s = t * softcap
    else:
        t = qk
        s = qk * qk_scale  # qk_scale = scale * log2(e): exp(x) = exp2(x * log2(e))
    if ALIBI:
        # ALiBi always aligns bottom-right; slope already carries the log2(e) factor.
        dist = (ri + (seqlen_k - seqlen_q)) - cj
        s = s - slope * tl.abs(dist).to(tl.float32)
    # Rows past seqlen_q need no mask: the forward never stores them and the backward gives them
    # lse = +inf (so P = 0). Fewer predicates per element = fewer registers.
    if EDGE:
        if CAUSAL or WINDOW:
            # Key j is visible from row i iff i + off - window_left <= j <= i + off + window_right
            # and j < seqlen_k: per-row bounds (BLOCK_M operations), then one compare an element
            # for each side the tile can cross.
            visible = cj <= tl.minimum(ri + (off + window_right), seqlen_k - 1)
            if WINDOW:
                visible = visible & (cj >= ri + (off - window_left))
        else:
            visible = cj < seqlen_k
        load_ok = visible & (ri < seqlen_q)
    else:
        # Interior tile: the mask (when there is one) is still read only for real rows (the
        # predicate broadcasts along the keys: one compare a row, not one an element).
        load_ok = ri < seqlen_q
    if MASK_MODE == 1:
        m = tl.load(MaskBlk + ri * stride_mm + cj * stride_mn, mask=load_ok, other=0).to(tl.int1)
        if EDGE:
            visible = visible & m
        else:
            visible = m
    if MASK_MODE == 2:
        m = tl.load(MaskBlk + ri * stride_mm + cj * stride_mn, mask=load_ok, other=0.0).to(tl.float32)
        # A finite mask value is a number, as torch adds it: log2(e) * finfo(float32).min
        # overflows to -inf, which would hide the key, so the product saturates at +-FLT_MAX
        # instead (a row of such scores is a row of equal logits: torch's uniform average).
        mt = m * 1.4426950408889634
        sat = tl.where(m < 0, -3.4028234663852886e38, 3.4028234663852886e38)
        s = s + tl.where((tl.abs(mt) == float("inf")) & (tl.abs(m) != float("inf")), sat, mt)
    if EDGE or MASK_MODE == 1:
        s = tl.where(visible, s, float("-inf"))
    return s, t


@triton.jit
def _dropout_keep(seed, rng_offset, dropout_p, off_b, off_h, num_heads, max_q, max_k, rows, cols):
    """Dropout keep mask of a (rows x cols) tile of batch (varlen: sequence) ``off_b`` and query head
    ``off_h``: ``tl.rand`` on the counter ``offset + ((b * H + h) * max_q + i) * max_k + j``, in int64
    (B * H * Lq * Lk passes 2**31). A pure function of its coordinates, so every kernel (and tile
    shape) redraws the same mask; fastattn/philox.py is the specification."""
    row_ctr = ((off_b * num_heads + off_h) * max_q + rows) * max_k + rng_offset
    return tl.rand(seed, row_ctr[:, None] + cols[None, :]) >= dropout_p


@triton.jit
def _dropout_keep_at(seed, rng_offset, dropout_p, off_b, off_h, num_heads, max_q, max_k, ri, cj):
    """:func:`_dropout_keep` with 2-D ``ri``/``cj`` broadcast to the tile (see :func:`_scores_at`):
    the same counters, for the transposed tiles of the Hopper dK/dV kernel."""
    row_ctr = ((off_b * num_heads + off_h) * max_q + ri) * max_k + rng_offset
    return tl.rand(seed, row_ctr + cj) >= dropout_p


@triton.jit
def _key_ranges(start_m, seqlen_k, off, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """Key blocks of the row block at ``start_m``: ``[lo, hi)`` are visited (the rest are hidden
    by the causal mask or the window and skipped), ``[full_lo, full_hi)`` are interior (every key
    visible from every row of the block, no ragged end); every bound but ``hi`` is a multiple of
    ``BLOCK_N``. Visited blocks outside the interior take the masked path."""
    lo = 0
    hi = seqlen_k
    full_lo = 0
    full_hi = (seqlen_k // BLOCK_N) * BLOCK_N
    if CAUSAL or WINDOW:
        hi = tl.minimum(seqlen_k, start_m + BLOCK_M + off + window_right)
        lo = (tl.maximum(0, start_m + off - window_left) // BLOCK_N) * BLOCK_N
        full_lo = lo
        # Key j is visible from every row i of the block iff j <= start_m + off + window_right
        # (the first row's right edge) and j >= start_m + BLOCK_M - 1 + off - window_left.
        full_hi = tl.minimum(full_hi, (tl.maximum(0, start_m + off + window_right + 1) // BLOCK_N) * BLOCK_N)
        if WINDOW:
            first = tl.maximum(0, start_m + BLOCK_M - 1 + off - window_left)
            full_lo = tl.maximum(lo, ((first + BLOCK_N - 1) // BLOCK_N) * BLOCK_N)
    return lo, hi, full_lo, full_hi


@triton.jit
def _score_scale(sm_scale, softcap, SOFTCAP: tl.constexpr):
    """``(qk_scale, cap)`` for :func:`_scores`: with softcap, ``qk_scale = scale / softcap`` and
    ``cap = softcap * log2(e)``; without, ``qk_scale = scale * log2(e)`` (exp -> exp2)."""
    if SOFTCAP:
        qk_scale = sm_scale / softcap
        cap = softcap * 1.4426950408889634
    else:
        qk_scale = sm_scale * 1.4426950408889634
        cap = softcap
    return qk_scale, cap


@triton.jit
def _positive_score_scale(sm_scale, softcap, SOFTCAP: tl.constexpr):
    """``(qk_scale, cap, flip_q)`` as :func:`_score_scale`, for the forward's FMA fold: without
    softcap ``qk_scale = |scale| * log2(e)`` and ``flip_q`` says to negate q once, since ``q.k *
    scale == (-q).k * |scale|`` exactly and the forward's interior step assumes a positive scale."""
    qk_scale, cap = _score_scale(sm_scale, softcap, SOFTCAP)
    flip_q = False
    if not SOFTCAP:
        if sm_scale < 0:
            flip_q = True
            qk_scale = -qk_scale
    return qk_scale, cap, flip_q


@triton.jit
def _head_operands(Alibi, Mask, off_b, off_h, stride_ab, stride_ah, stride_mb, stride_mh, ALIBI: tl.constexpr,
                   MASK_MODE: tl.constexpr):
    """``(slope, mask_base)`` of batch ``off_b``, query head ``off_h``: the ALiBi slope times
    log2(e) (0 without ALiBi) and the mask's ``(b, h)`` plane (``Mask`` itself without a mask)."""
    slope = 0.0
    if ALIBI:
        slope = tl.load(Alibi + off_b * stride_ab + off_h * stride_ah).to(tl.float32) * 1.4426950408889634
    mask_base = Mask
    if MASK_MODE != 0:
        mask_base = Mask + off_b.to(tl.int64) * stride_mb + off_h.to(tl.int64) * stride_mh
    return slope, mask_base


@triton.jit
def _row_block_id(CAUSAL: tl.constexpr):
    """The row block of this program (grid axis 0): causal launches the heaviest (last) row
    blocks, which see the most keys, first, so that the light ones fill the tail."""
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
    return pid_m


@triton.jit
def _softmax_step(qk, m_i, l_i, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope,
                  mask_base, stride_mm, stride_mn, EDGE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
                  SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, MASK_MODE: tl.constexpr):
    """The forward's online-softmax update for one key block of raw products ``qk``:
    ``(p, alpha, l_i, m_new)``, ``p`` the block's unnormalised base-2 probabilities, ``alpha`` the
    rescale of what was accumulated before. ``EDGE`` blocks compare every element; interior
    blocks without features fold the scale and the max subtraction into one FMA a score
    (``qk_scale > 0``: see :func:`_positive_score_scale`)."""
    if EDGE or SOFTCAP or ALIBI or MASK_MODE != 0:
        s, _t = _scores(qk, rows, cols, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope,
                        mask_base, stride_mm, stride_mn, EDGE, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if EDGE or MASK_MODE != 0:
            # A row that has seen only hidden keys has max -inf: subtract 0 instead, so exp2 gives 0, not NaN.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:  # softcap and ALiBi alone hide nothing: no -inf to guard
            m_sub = m_new
        p = tl.math.exp2(s - m_sub[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_sub = m_new
        p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)  # the softmax normaliser sums every probability, dropped or not
    return p, alpha, l_i, m_new


@triton.jit
def _forward_result(acc, l_i, m_i, dropout_p, DROPOUT: tl.constexpr):
    """``(out, lse)`` of a row block from the online softmax's state: ``acc / l`` (0 for a row
    that saw no key), scaled by ``1 / (1 - p)`` under dropout, and the natural-log LSE (``+inf``
    for a row that saw no key)."""
    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    if DROPOUT:
        acc = acc * (1.0 / (1.0 - dropout_p))  # kept probabilities are scaled by 1 / (1 - p)
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    return acc, lse


@triton.jit
def _lse_rows(lse_ptrs, lo_ptrs, r_ok, MASK_MODE: tl.constexpr, MASKED: tl.constexpr = True,
              BASE2: tl.constexpr = False):
    """``(lse2, lse_lo)`` of a row block for :func:`_bwd_probs`: the base-2 LSE (one multiply a
    row, not one a score; none when ``BASE2``: the LSE given is base 2 already), and under an
    additive mask the base-2 row max and ``log2`` of the row sum apart (see
    :func:`_attn_bwd_rowstats`). Rows past the end read ``+inf``: P = 0."""
    if MASKED:
        lse = tl.load(lse_ptrs, mask=r_ok, other=float("inf"))
    else:  # every row real (an interior block): no predicate
        lse = tl.load(lse_ptrs)
    if MASK_MODE == 2:
        lse2 = lse
        if MASKED:
            lse_lo = tl.load(lo_ptrs, mask=r_ok, other=0.0)
        else:
            lse_lo = tl.load(lo_ptrs)
    else:
        if BASE2:
            lse2 = lse
        else:
            lse2 = lse * 1.4426950408889634
        lse_lo = lse2
    return lse2, lse_lo


@triton.jit
def _query_ranges(start_n, seqlen_q, seqlen_k, off, window_left, window_right, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr):
    """Query blocks that see the key block at ``start_n``: ``[lo, hi)`` are visited,
    ``[full_lo, full_hi)`` are interior (every row sees every key of the block, no ragged rows or
    keys); every bound but ``hi`` is a multiple of ``BLOCK_M``."""
    lo = 0
    hi = seqlen_q
    full_lo = 0
    full_hi = (seqlen_q // BLOCK_M) * BLOCK_M
    if CAUSAL or WINDOW:
        # Rows that see key j: j - off - window_right <= i <= j - off + window_left.
        lo = (tl.maximum(0, start_n - off - window_right) // BLOCK_M) * BLOCK_M
        hi = tl.minimum(seqlen_q, start_n + BLOCK_N - off + window_left)
        # Every row i of [m0, m0 + BLOCK_M) sees every key of the block iff
        # m0 >= start_n + BLOCK_N - 1 - off - window_right and m0 + BLOCK_M <= start_n - off + window_left + 1.
        first = tl.maximum(0, start_n + BLOCK_N - 1 - off - window_right)
        full_lo = tl.maximum(lo, ((first + BLOCK_M - 1) // BLOCK_M) * BLOCK_M)
        if WINDOW:
            full_hi = tl.minimum(full_hi, (tl.maximum(0, start_n - off + window_left + 1) // BLOCK_M) * BLOCK_M)
    if start_n + BLOCK_N > seqlen_k:  # ragged keys: every block of this program takes the masked path
        full_lo = lo
        full_hi = lo
    return lo, hi, full_lo, full_hi


@triton.jit
def _probs_at(qk, lse2, lse_lo, ri, cj, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope,
              mask_base, stride_mm, stride_mn, EDGE: tl.constexpr, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
              SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, MASK_MODE: tl.constexpr):
    """``(p, t)`` of a backward tile of raw products ``qk``: ``P = exp2(s - lse2)`` (under an
    additive mask ``exp2((s - max) - log2 sum)``, see :func:`_lse_rows`) and ``tanh`` of the
    softcapped scores. ``lse2``/``lse_lo`` and ``ri``/``cj`` are 2-D, broadcast along the tile
    as in :func:`_scores_at`. ``EDGE`` compares every element; an interior tile without features
    computes ``P = exp2(qk * scale_log2e - lse2)``, one FMA a score."""
    if EDGE or SOFTCAP or ALIBI or MASK_MODE != 0:
        s, t = _scores_at(qk, ri, cj, seqlen_q, seqlen_k, off, window_left, window_right, qk_scale, cap, slope,
                          mask_base, stride_mm, stride_mn, EDGE, CAUSAL, WINDOW, SOFTCAP, ALIBI, MASK_MODE)
        if MASK_MODE == 2:
            p = tl.math.exp2((s - lse2) - lse_lo)
        else:
            p = tl.math.exp2(s - lse2)
    else:
        t = qk
        p = tl.math.exp2(qk * qk_scale - lse2)
    return p, t
