"""Split-KV ("flash-decoding") attention against a KV cache in Triton, for ``flash_attn_with_kvcache``.

Math (batch ``b``, query row ``i`` of ``Lq``, key ``j`` of ``Lk_b = cache_seqlens[b] + Lnew``)::

    s_ij = scale * q_i . k_j                  (then ``softcap * tanh(s / softcap)`` if softcap)
    s_ij += -slope[b, h] * |i + off - j|      (ALiBi), off = Lk_b - Lq (bottom-right, flash-attn)
    visible iff i + off - window_left <= j <= i + off + window_right (causal: window_right = 0)
    o_i = softmax(s_i) V,  lse_i = log sum_j exp(s_ij)   (+inf and o = 0 if row i sees no key)

Three kernels, one stream:

1. ``_append_kernel`` writes the new keys/values ``k_new``/``v_new`` into the caches *in place*
   at rows ``cache_seqlens[b] .. + Lnew`` (nothing else of the caches is touched).
2. ``_decode_split_kernel``: decoding is memory bound and has few query rows, so the
   parallelism must come from the keys (Dao et al., "Flash-Decoding for long-context
   inference", 2023). The cache is cut into ``num_splits`` ranges of ``keys_per_split``
   keys; one program owns one (split, batch, kv head, block of query rows) and runs the
   FlashAttention online softmax over its range, writing a partial output normalised by its
   own sum and that partial's LSE. GQA: the ``group = Hq / Hk`` query heads that share a kv
   head are the rows of one program (row ``r`` = query ``r // group``, head ``hk * group +
   r % group``), so each K/V block is read once per group and the ``tl.dot`` tile (at least
   16 rows) is filled by the group instead of by padding.
3. ``_decode_merge_kernel`` combines the partials of each row by their LSEs:
   ``lse = log sum_s exp(lse_s)``, ``o = sum_s exp(lse_s - lse) o_s`` (an empty split has
   ``lse_s = -inf`` and weighs 0). With one split, kernel 2 writes the final output directly.

``num_splits`` (:func:`choose_num_splits`) fills the device: about two waves of programs
over its SMs, with at least ``MIN_BLOCKS_PER_SPLIT`` key blocks per split so the merge
stays cheap; a single query token over a 32k cache gets ~32 splits per kv head.

Shapes: ``q`` ``(B, Lq, Hq, D)``, caches ``(B, Lcache, Hk, D | Dv)``, all by strides (unit
last dim). Indexed caches, as flash-attn's, are addressed in place by both the append and the
split kernel: a paged cache ``(num_blocks, page_block_size, Hk, D | Dv)`` through an int32
``block_table`` ``(B, max_blocks)`` (any page size: each key of a block looks its page up, so a
block may straddle pages), a row per sequence through ``cache_batch_idx``, and keys before
``cache_leftpad[b]`` skipped. Only the table entries of keys in range are read.

Head dims 1..256 run in power-of-two ``BLOCK_D``/``BLOCK_DV`` tiles with masked loads.
Exponentials are ``exp2`` with ``log2(e)`` folded into the scale.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._interpreter import ensure_interpreter_fixes

__all__ = ["kvcache_fwd", "choose_num_splits", "decode_config", "MAX_SPLITS", "MIN_BLOCKS_PER_SPLIT"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# "Unbounded" window side: never binds, and i + off + _FAR stays within int32.
_FAR = 1 << 30

MAX_SPLITS = 128
MIN_BLOCKS_PER_SPLIT = 4
WAVES = 2
# SM count assumed for tensors not on a GPU (the interpreter): an A100's.
DEFAULT_SM_COUNT = 108
_SM_COUNT: dict[int, int] = {}


# --------------------------------------------------------------------------- configs


def block_d(head_dim: int) -> int:
    """Register tile width for a head dim: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def decode_config(rows: int, bd: int, bdv: int, elem: int) -> dict:
    """Tile sizes, warps and register cap of the split kernel (``elem``: bytes of a q element).

    ``rows`` = ``Lq * group`` query rows of one kv head; ``BLOCK_M`` covers them (at least 16,
    ``tl.dot``'s minimum; at most 64, or 32 for 256-wide heads and for fp32 heads of 128 or
    more, so the fp32 accumulator, and in fp32 the FMA dot's operands, fit the registers).
    ``BLOCK_N`` keeps a stage of K and V tiles within 32 KB of shared memory (two stages fit
    every arch's 99 KB); 8 warps for the widest tiles. ``maxnreg`` (``None``: ptxas's choice)
    is 255 for heads of at most 16 and for tiles of up to 512 elements (1024 in 16-bit: 16 rows
    of 64-wide heads, 32 of 32-wide), where ptxas otherwise caps some specialisations at an occupancy step
    (72 to 168 registers) and spills (32 bytes at 128 registers for 32 x 32 on sm_90 with the
    paged-cache addressing); elsewhere it would only raise registers. The ahead-of-time check,
    tests/test_triton_aot_decode_softmax.py, shows that none of these tiles spills.
    """
    wide = max(bd, bdv)
    cap = 64 if wide <= (128 if elem == 2 else 64) else 32
    bm = min(cap, max(16, triton.next_power_of_2(rows)))
    budget = 32768 // ((bd + bdv) * elem)
    bn = max(16, min(64, 1 << (budget.bit_length() - 1) if budget > 0 else 16))  # a power of two
    # fp32 operands of the (FMA) dot are held in registers: 8 warps from 2048-element tiles, and
    # at most 32 keys a block from 4096 (16 for heads of 128 or more), or ptxas spills.
    warps = 4 if bm * wide <= (4096 if elem == 2 else 1024) else 8
    if elem == 4 and bm * wide >= 4096:
        bn = min(bn, 32 if wide <= 64 else 16)
    maxnreg = 255 if wide == 16 or bm * wide <= (1024 if elem == 2 else 512) else None
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=2, maxnreg=maxnreg)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return DEFAULT_SM_COUNT
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def choose_num_splits(programs: int, max_keys: int, block_n: int, sm_count: int) -> int:
    """Splits of the key range so that ``programs * splits`` fills about ``WAVES`` waves of
    ``sm_count`` SMs. ``programs`` = batch x kv heads x query-row blocks (already one wave or
    more: 1 split). Each split keeps at least ``MIN_BLOCKS_PER_SPLIT`` blocks of ``block_n``
    keys; at most ``MAX_SPLITS``."""
    if programs >= sm_count or max_keys <= 0:
        return 1
    want = triton.cdiv(WAVES * sm_count, programs)
    most = triton.cdiv(triton.cdiv(max_keys, block_n), MIN_BLOCKS_PER_SPLIT)
    return max(1, min(want, most, MAX_SPLITS))


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf in fp32, and runs in the interpreter.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _append_kernel(
    KNew, VNew, K, V, SeqLens, BlockTable, BatchIdx,
    stride_nkb, stride_nkn, stride_nkh, stride_nkd,
    stride_nvb, stride_nvn, stride_nvh, stride_nvd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_tb, stride_tn,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BATCH_IDX: tl.constexpr,
):
    """Copies new token ``t`` of kv head ``h`` of batch ``b`` to logical cache row
    ``cache_seqlens[b] + t``: row ``p % PAGE_SIZE`` of page ``block_table[b, p // PAGE_SIZE]``
    when paged (``PAGE_SIZE > 0``), else row ``p`` of cache ``cache_batch_idx[b]`` (or ``b``)."""
    t = tl.program_id(0).to(tl.int64)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2).to(tl.int64)
    dst = tl.load(SeqLens + off_b).to(tl.int64) + t
    if PAGE_SIZE > 0:
        page = tl.load(BlockTable + off_b * stride_tb + (dst // PAGE_SIZE) * stride_tn).to(tl.int64)
        row = dst % PAGE_SIZE
    else:
        if BATCH_IDX:
            page = tl.load(BatchIdx + off_b).to(tl.int64)
        else:
            page = off_b
        row = dst
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(KNew + off_b * stride_nkb + t * stride_nkn + off_h * stride_nkh + offs_d * stride_nkd,
                mask=offs_d < HEAD_DIM)
    tl.store(K + page * stride_kb + row * stride_kn + off_h * stride_kh + offs_d * stride_kd, k,
             mask=offs_d < HEAD_DIM)
    v = tl.load(VNew + off_b * stride_nvb + t * stride_nvn + off_h * stride_nvh + offs_dv * stride_nvd,
                mask=offs_dv < HEAD_DIM_V)
    tl.store(V + page * stride_vb + row * stride_vn + off_h * stride_vh + offs_dv * stride_vd, v,
             mask=offs_dv < HEAD_DIM_V)


@triton.jit
def _decode_split_kernel(
    Q, K, V, Out, LSE, SeqLens, Alibi, BlockTable, BatchIdx, LeftPad,
    stride_qb, stride_qm, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_os, stride_ob, stride_om, stride_oh, stride_od,
    stride_ls, stride_lb, stride_lh, stride_lm,
    stride_ab, stride_ah,
    stride_tb, stride_tn,
    seqlen_q, seqlen_new, group, heads_k, keys_per_split, sm_scale, softcap, window_left, window_right,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BATCH_IDX: tl.constexpr, LEFTPAD: tl.constexpr,
):
    """One (split, query-row block x kv head, batch): attention of ``BLOCK_M`` rows (query x
    group head) over keys ``[split * keys_per_split, (split + 1) * keys_per_split)``.

    ``SPLIT``: write the partial (fp32 output normalised by its own sum, LSE ``-inf`` when the
    range is empty) at ``Out + split * stride_os``; else the final output (0, LSE ``+inf``
    for a row that sees no key).

    Cache addressing: ``PAGE_SIZE > 0``: logical key ``j`` is row ``j % PAGE_SIZE`` of page
    ``block_table[b, j // PAGE_SIZE]`` (``K`` is ``(num_blocks, PAGE_SIZE, Hk, D)``); else row
    ``j`` of cache ``cache_batch_idx[b]`` (``BATCH_IDX``) or ``b``. ``LEFTPAD``: keys before
    ``cache_leftpad[b]`` are not part of the sequence (never read); key indices stay the
    cache's, so the bottom-right alignment ``off`` and ALiBi distances are unchanged."""
    split = tl.program_id(0)
    pid = tl.program_id(1)
    off_hk = (pid % heads_k).to(tl.int64)
    start_r = (pid // heads_k) * BLOCK_M
    off_b = tl.program_id(2).to(tl.int64)
    seqlen_k = tl.load(SeqLens + off_b) + seqlen_new
    off = seqlen_k - seqlen_q  # bottom-right alignment

    offs_r = start_r + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows_total = seqlen_q * group
    row_ok = offs_r < rows_total
    qi = offs_r // group  # query position
    heads = off_hk * group + offs_r % group  # query head (GQA group of kv head off_hk)

    q = tl.load(Q + off_b * stride_qb + qi[:, None] * stride_qm + heads[:, None] * stride_qh
                + offs_d[None, :] * stride_qd, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if SOFTCAP:
        qk_scale = sm_scale / softcap
        cap = softcap * 1.4426950408889634  # tanh in [-1, 1] -> base-2 scores
    else:
        qk_scale = sm_scale * 1.4426950408889634  # exp -> exp2
        cap = softcap
    slope = tl.zeros([BLOCK_M], tl.float32)
    if ALIBI:
        slope = tl.load(Alibi + off_b * stride_ab + heads * stride_ah, mask=row_ok, other=0.0) * 1.4426950408889634

    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, seqlen_k)
    if LEFTPAD:
        lo = tl.maximum(lo, tl.load(LeftPad + off_b))
    if WINDOW:  # skip the key blocks no row of this block can see
        i_first = start_r // group
        i_last = (tl.minimum(start_r + BLOCK_M, rows_total) - 1) // group
        lo = tl.maximum(lo, i_first + off - window_left)
        hi = tl.minimum(hi, i_last + off + window_right + 1)

    k_base = K + off_hk * stride_kh
    v_base = V + off_hk * stride_vh
    if PAGE_SIZE == 0:  # one cache row per sequence: its base is fixed, a block adds a scalar offset
        if BATCH_IDX:
            cache_b = tl.load(BatchIdx + off_b).to(tl.int64)
        else:
            cache_b = off_b
        k_base += cache_b * stride_kb
        v_base += cache_b * stride_vb
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_ok = cols < hi  # this split's keys only; never reads past the valid cache rows
        if PAGE_SIZE > 0:
            # Each key's page through the table (only entries of keys in range are read: the
            # rest of the table, and the pages it does not name, may hold anything). Page
            # offsets in int64 (a pool of pages may exceed 2^31 elements), rows within a page
            # in int32.
            pages = tl.load(BlockTable + off_b * stride_tb + (cols // PAGE_SIZE) * stride_tn, mask=kv_ok,
                            other=0).to(tl.int64)
            in_page = cols % PAGE_SIZE
            k_ptrs = k_base + (pages * stride_kb + in_page * stride_kn)[None, :] + offs_d[:, None] * stride_kd
        else:
            # A scalar int64 block start, then int32 offsets within the block: a per-key int64
            # offset costs registers, and the widest tiles spill with it.
            kn = tl.cast(start_n, tl.int64)
            k_ptrs = k_base + kn * stride_kn + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
        k = tl.load(k_ptrs, mask=kv_ok[None, :] & (offs_d[:, None] < HEAD_DIM), other=0.0)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION)
        if SOFTCAP:
            s = _tanh(qk * qk_scale) * cap
        else:
            s = qk * qk_scale
        if ALIBI:
            s -= slope[:, None] * tl.abs(qi[:, None] + off - cols[None, :]).to(tl.float32)
        visible = kv_ok[None, :]
        if WINDOW:
            rel = cols[None, :] - qi[:, None]
            visible = visible & (rel <= off + window_right) & (rel >= off - window_left)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen only hidden keys has max -inf: subtract 0 instead so exp2 gives 0, not NaN.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        if PAGE_SIZE > 0:
            v_ptrs = v_base + (pages * stride_vb + in_page * stride_vn)[:, None] + offs_dv[None, :] * stride_vd
        else:
            v_ptrs = v_base + kn * stride_vn + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
        v = tl.load(v_ptrs, mask=kv_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    acc = acc / tl.where(empty, 1.0, l_i)[:, None]
    if SPLIT:
        none = float("-inf")  # an empty range weighs exp(-inf) = 0 in the merge
    else:
        none = float("inf")  # flash-attn's LSE of a row that sees no key
    lse = tl.where(empty, none, (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    o_ptr = (Out + split.to(tl.int64) * stride_os + off_b * stride_ob + qi[:, None] * stride_om
             + heads[:, None] * stride_oh + offs_dv[None, :] * stride_od)
    tl.store(o_ptr, acc.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    l_ptr = LSE + split.to(tl.int64) * stride_ls + off_b * stride_lb + heads * stride_lh + qi * stride_lm
    tl.store(l_ptr, lse, mask=row_ok)


@triton.jit
def _decode_merge_kernel(
    OPart, LSEPart, Out, LSE,
    stride_ps, stride_pb, stride_pm, stride_ph, stride_pd,
    stride_qs, stride_qb, stride_qh, stride_qm,
    stride_ob, stride_om, stride_oh, stride_od,
    stride_lb, stride_lh, stride_lm,
    num_splits, seqlen_q, heads,
    HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Combines the ``num_splits`` partials of one (batch, query, head) row by their LSEs."""
    pid = tl.program_id(0).to(tl.int64)
    off_h = pid % heads
    qi = (pid // heads) % seqlen_q
    off_b = pid // (heads * seqlen_q)
    l_base = LSEPart + off_b * stride_qb + off_h * stride_qh + qi * stride_qm
    o_base = OPart + off_b * stride_pb + qi * stride_pm + off_h * stride_ph
    m = tl.full([], float("-inf"), tl.float32)
    for s in range(0, num_splits):
        m = tl.maximum(m, tl.load(l_base + s * stride_qs))
    m_sub = tl.where(m == float("-inf"), 0.0, m)  # every split empty: weights exp(-inf) = 0
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < HEAD_DIM_V
    acc = tl.zeros([BLOCK_DV], tl.float32)
    total = tl.zeros([], tl.float32)
    for s in range(0, num_splits):
        # Weights relative to the largest partial LSE: each <= 1, no overflow.
        w = tl.exp(tl.load(l_base + s * stride_qs) - m_sub)
        total += w
        acc += w * tl.load(o_base + s * stride_ps + offs_dv * stride_pd, mask=dv_ok, other=0.0)
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)
    lse = tl.where(empty, float("inf"), m_sub + tl.log(tl.where(empty, 1.0, total)))
    tl.store(Out + off_b * stride_ob + qi * stride_om + off_h * stride_oh + offs_dv * stride_od,
             out.to(Out.dtype.element_ty), mask=dv_ok)
    tl.store(LSE + off_b * stride_lb + off_h * stride_lh + qi * stride_lm, lse)


# --------------------------------------------------------------------------- launcher


def _window(args) -> tuple[bool, int, int]:
    """(WINDOW flag, left, right) with unbounded sides as a far distance; causal = right 0."""
    right = 0 if args.causal else args.window_right
    window = args.causal or args.window_left >= 0 or args.window_right >= 0
    return window, (args.window_left if args.window_left >= 0 else _FAR), (right if right >= 0 else _FAR)


def kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, args, *, alibi_slopes=None,
                num_splits=None, block_table=None, cache_batch_idx=None, cache_leftpad=None):
    """Decoding against a KV cache, flash-attn's ``flash_attn_with_kvcache`` (already validated).
    Also the ``triton`` backend's ``kvcache_fwd`` as the core op calls it (``args`` by keyword).

    Args:
        q: ``(B, Lq, Hq, D)``; k_cache, v_cache: ``(B_cache, Lcache, Hk, D)`` / ``(B_cache,
            Lcache, Hk, Dv)``, or paged (with ``block_table``) ``(num_blocks, page_block_size,
            Hk, D | Dv)``; ``Hq % Hk == 0``; any strides with a unit last dim.
        k_new, v_new: ``None`` or ``(B, Lnew, Hk, D | Dv)``: written into the caches in place at
            logical rows ``cache_seqlens[b] .. + Lnew`` first.
        cache_seqlens: int32 ``(B,)`` tokens already in each cache (``+ Lnew`` within its capacity).
        args: :class:`fastattn.attention_args.AttentionArgs` (scale, causal, window, softcap;
            bottom-right alignment, no dropout).
        alibi_slopes: ``(B, Hq)`` (any strides, e.g. a broadcast ``(Hq,)``) or ``None``; read in fp32.
        num_splits: ``0`` = :func:`choose_num_splits`; else exactly that many key ranges
            (trailing ones may be empty), e.g. 1 for the unsplit kernel; ``None`` = ``args.num_splits``.
        block_table: int32 ``(B, max_blocks)`` (any strides) or ``None``: logical row ``p`` of
            sequence ``b`` is row ``p % page_block_size`` of page ``block_table[b, p //
            page_block_size]``, read in place (no gather); any page size.
        cache_batch_idx: int32 ``(B,)`` or ``None``: the cache row of each sequence (not paged).
        cache_leftpad: int32 ``(B,)`` or ``None``: keys before it are not attended.

    Returns:
        ``out`` ``(B, Lq, Hq, Dv)`` in q's dtype and ``lse`` fp32 ``(B, Hq, Lq)`` (natural log,
        ``+inf`` and ``out = 0`` for a row that sees no key).
    """
    ensure_interpreter_fixes()
    num_splits = args.num_splits if num_splits is None else num_splits
    batch, seqlen_q, heads, head_dim = q.shape
    heads_k, head_dim_v = k_cache.shape[2], v_cache.shape[3]
    page_size = 0 if block_table is None else k_cache.shape[1]
    # Keys a sequence can hold: the table's pages, or the cache's rows.
    seqlen_cache = k_cache.shape[1] if block_table is None else block_table.shape[1] * page_size
    seqlen_new = 0 if k_new is None else k_new.shape[1]
    out = torch.empty(batch, seqlen_q, heads, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32, device=q.device)
    lens = cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    # Unused index pointers get cache_seqlens (never read: their flags are off).
    table = lens if block_table is None else block_table.to(torch.int32)
    table_strides = (0, 0) if block_table is None else table.stride()
    batch_idx = lens if cache_batch_idx is None else cache_batch_idx.to(torch.int32).contiguous()
    leftpad = lens if cache_leftpad is None else cache_leftpad.to(torch.int32).contiguous()
    bd, bdv = block_d(head_dim), block_d(head_dim_v)
    if seqlen_new and batch and heads_k:
        _append_kernel[(seqlen_new, heads_k, batch)](
            k_new, v_new, k_cache, v_cache, lens, table, batch_idx, *k_new.stride(), *v_new.stride(),
            *k_cache.stride(), *v_cache.stride(), *table_strides, HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v,
            BLOCK_D=bd, BLOCK_DV=bdv, PAGE_SIZE=page_size, BATCH_IDX=cache_batch_idx is not None,
            num_warps=1 if max(bd, bdv) <= 64 else 2,
        )
    if out.numel() == 0:
        return out, lse.fill_(float("inf"))

    group = heads // heads_k
    rows = seqlen_q * group
    cfg = decode_config(rows, bd, bdv, q.element_size())
    row_blocks = triton.cdiv(rows, cfg["BLOCK_M"])
    # Every cache_seqlens[b] + Lnew <= the capacity (validated), which bounds the keys without a sync.
    max_keys = max(seqlen_cache, 1)
    if num_splits <= 0:
        num_splits = choose_num_splits(batch * heads_k * row_blocks, max_keys, cfg["BLOCK_N"], _sm_count(q.device))
        keys_per_split = triton.cdiv(triton.cdiv(max_keys, num_splits), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
        num_splits = triton.cdiv(max_keys, keys_per_split)  # no split left empty by the rounding
    else:
        keys_per_split = triton.cdiv(max_keys, num_splits)

    window, wl, wr = _window(args)
    if alibi_slopes is not None:
        slopes = alibi_slopes.float()
        slopes = slopes if slopes.dim() == 2 else slopes.unsqueeze(0)
        alibi, alibi_strides = slopes, (slopes.stride(0) if slopes.shape[0] > 1 else 0, slopes.stride(1))
    else:
        alibi, alibi_strides = lens, (0, 0)
    split = num_splits > 1
    if split:
        o_dst = torch.empty(num_splits, batch, seqlen_q, heads, head_dim_v, dtype=torch.float32, device=q.device)
        l_dst = torch.empty(num_splits, batch, heads, seqlen_q, dtype=torch.float32, device=q.device)
    else:
        o_dst, l_dst = out.unsqueeze(0), lse.unsqueeze(0)
    _decode_split_kernel[(num_splits, row_blocks * heads_k, batch)](
        q, k_cache, v_cache, o_dst, l_dst, lens, alibi, table, batch_idx, leftpad,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *o_dst.stride(), *l_dst.stride(), *alibi_strides,
        *table_strides, seqlen_q, seqlen_new, group, heads_k, keys_per_split, float(args.scale),
        float(args.softcap), wl, wr,
        HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_D=bd, BLOCK_DV=bdv, WINDOW=window,
        SOFTCAP=args.softcap > 0, ALIBI=alibi_slopes is not None, SPLIT=split,
        # fp32: full-precision FMA products. Decoding is bound by reading the cache, so tensor cores
        # buy little here, and tf32x3's split operands cost registers (it spills at these tiles).
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        maxnreg=cfg["maxnreg"], PAGE_SIZE=page_size, BATCH_IDX=cache_batch_idx is not None,
        LEFTPAD=cache_leftpad is not None,
    )
    if split:
        _decode_merge_kernel[(batch * seqlen_q * heads,)](
            o_dst, l_dst, out, lse, *o_dst.stride(), *l_dst.stride(), *out.stride(), *lse.stride(),
            num_splits, seqlen_q, heads, HEAD_DIM_V=head_dim_v, BLOCK_DV=bdv, num_warps=1 if bdv <= 64 else 2,
        )
    return out, lse


# --------------------------------------------------------------------------- ahead-of-time cases

_AOT_DTYPES = {"fp16": 2, "fp32": 4}  # bf16 compiles to the same tiles and register footprint as fp16
_AOT_BLOCK_D = (16, 32, 64, 128, 256)
# (WINDOW, SOFTCAP, ALIBI): every feature on (the register-heaviest), none (the plain launch) and
# the causal launch (causal is not a runtime value: it launches WINDOW=True with window_right = 0;
# the most common decoding launch, and ptxas allocates it unlike the others: fp32 32 x 128 tiles
# with 32 keys a block spill over 700 bytes causal on sm_90, and none with every feature on).
_AOT_ALL_ON = (True, True, True)
_AOT_PLAIN = (False, False, False)
_AOT_CAUSAL = (True, False, False)
# Value head dims unlike the query's (e.g. MLA-style 128/64), one dtype: (BLOCK_D, BLOCK_DV).
_AOT_MIXED_DV = ((128, 64), (64, 128))
_AOT_PAGE = 16  # page_block_size of the paged cases


def _aot_split_case(dname: str, elem: int, bd: int, bdv: int, bm: int, split: bool, features: tuple,
                    page_size: int = 0):
    """The split (``split``) or direct kernel at the tile :func:`decode_config` picks for ``bm``
    rows, with ``features`` = (WINDOW, SOFTCAP, ALIBI), as :func:`kvcache_fwd` launches it;
    ``page_size > 0``: reading a paged cache through the block table."""
    from ._configs import AotCase, signature_for

    window, softcap, alibi = features
    cfg = decode_config(bm, bd, bdv, elem)
    fn = _decode_split_kernel
    const = dict(HEAD_DIM=bd, HEAD_DIM_V=bdv, BLOCK_D=bd, BLOCK_DV=bdv, WINDOW=window, SOFTCAP=softcap,
                 ALIBI=alibi, SPLIT=split, DOT_PRECISION="ieee" if dname == "fp32" else "tf32",
                 BLOCK_M=bm, BLOCK_N=cfg["BLOCK_N"], stride_qd=1, stride_kd=1, stride_vd=1, stride_od=1,
                 PAGE_SIZE=page_size, BATCH_IDX=False, LEFTPAD=False)
    out_ptr = "*fp32" if split else f"*{dname}"
    # Without ALiBi the launcher passes the int32 cache_seqlens as the (unread) slopes pointer.
    sig = signature_for(fn, {"Out": out_ptr, "LSE": "*fp32", "SeqLens": "*i32", "Alibi": "*fp32" if alibi else "*i32",
                             "BlockTable": "*i32", "BatchIdx": "*i32", "LeftPad": "*i32"},
                        f"*{dname}", floats=("sm_scale", "softcap"), constexprs=const)
    return AotCase(
        kernel="decode_split" if split else "decode_direct", fn=fn, signature=sig, constexprs=const,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], maxnreg=cfg["maxnreg"],
        config=dict(dtype=dname, BLOCK_D=bd, BLOCK_DV=bdv, BLOCK_M=bm, BLOCK_N=cfg["BLOCK_N"], WINDOW=window,
                    SOFTCAP=softcap, ALIBI=alibi, **({} if cfg["maxnreg"] is None else {"maxnreg": cfg["maxnreg"]}),
                    **({"PAGE_SIZE": page_size} if page_size else {})),
        divisible_by_16=("Q", "K", "V", "Out", "LSE", "stride_qb", "stride_qm", "stride_qh",
                         "stride_kb", "stride_kn", "stride_kh", "stride_vb", "stride_vn", "stride_vh"),
    )


def _aot_block_ms(bd: int, bdv: int, elem: int) -> list:
    """Every ``BLOCK_M`` :func:`decode_config` picks for these head-dim tiles."""
    return sorted({decode_config(r, bd, bdv, elem)["BLOCK_M"] for r in (1, 32, 64, 1024)})


def aot_cases() -> list:
    """Split-kernel tiles for fastattn/buildcheck/triton_aot.py, as :func:`kvcache_fwd` launches them:

    - every tile :func:`decode_config` can pick (``BLOCK_M`` 16..64 x ``BLOCK_D`` 16..256,
      ``Dv == D``, with its ``maxnreg``) in fp16 and fp32, split and direct, with every feature
      flag on (the register-heaviest specialisation), with none (the plain launch) and with the
      window only (the causal launch); in fp32 the direct kernel differs from the split one
      only by the LSE constant of an empty row, and compiles to the same registers, so the
      plain and causal fp32 cases are the split ones;
    - ``Dv != D`` (128/64 and 64/128) at every ``BLOCK_M`` in fp16, split, every feature on;
    - paged caches (``PAGE_SIZE`` 16), split: every tile causal, and every feature on at 128;
    - the append kernel per head-dim tile and dtype; the merge kernel per head-dim tile with an
      fp16 output, and at ``BLOCK_DV`` 128 with fp32 and bf16 outputs.

    Unit head-dim strides and 16-divisible pointers/strides, as Triton's launcher specialises them."""
    from ._configs import AotCase, signature_for

    cases = []
    for dname, elem in _AOT_DTYPES.items():
        for bd in _AOT_BLOCK_D:
            for bm in _aot_block_ms(bd, bd, elem):
                for split in (True, False):
                    cases.append(_aot_split_case(dname, elem, bd, bd, bm, split, _AOT_ALL_ON))
                    if split or dname != "fp32":
                        cases.append(_aot_split_case(dname, elem, bd, bd, bm, split, _AOT_PLAIN))
                        cases.append(_aot_split_case(dname, elem, bd, bd, bm, split, _AOT_CAUSAL))
            const = dict(HEAD_DIM=bd, HEAD_DIM_V=bd, BLOCK_D=bd, BLOCK_DV=bd, stride_nkd=1, stride_nvd=1,
                         stride_kd=1, stride_vd=1, PAGE_SIZE=0, BATCH_IDX=False)
            cases.append(AotCase(
                kernel="decode_append", fn=_append_kernel,
                signature=signature_for(_append_kernel, {"SeqLens": "*i32", "BlockTable": "*i32", "BatchIdx": "*i32"},
                                        f"*{dname}", constexprs=const),
                constexprs=const, num_warps=1 if bd <= 64 else 2, num_stages=1, config=dict(dtype=dname, BLOCK_D=bd),
                divisible_by_16=("KNew", "VNew", "K", "V"),
            ))
    for bd, bdv in _AOT_MIXED_DV:
        for bm in _aot_block_ms(bd, bdv, 2):
            cases.append(_aot_split_case("fp16", 2, bd, bdv, bm, True, _AOT_ALL_ON))
    # Paged caches: per-key page lookups add index registers. Every tile in the causal launch
    # (paged decoding's usual one), and every feature on at the common 128-wide head. One page
    # size: it only sets the shift and mask of the lookup (16 and 256 compile to the same
    # registers).
    for dname, elem in _AOT_DTYPES.items():
        for bd in _AOT_BLOCK_D:
            for bm in _aot_block_ms(bd, bd, elem):
                cases.append(_aot_split_case(dname, elem, bd, bd, bm, True, _AOT_CAUSAL, _AOT_PAGE))
        for bm in _aot_block_ms(128, 128, elem):
            cases.append(_aot_split_case(dname, elem, 128, 128, bm, True, _AOT_ALL_ON, _AOT_PAGE))
    # The merge reads fp32 partials; only the output dtype differs (q's).
    merges = [("fp16", bd) for bd in _AOT_BLOCK_D] + [("fp32", 128), ("bf16", 128)]
    for out_dtype, bd in merges:
        const = dict(HEAD_DIM_V=bd, BLOCK_DV=bd, stride_pd=1, stride_od=1)
        cases.append(AotCase(
            kernel="decode_merge", fn=_decode_merge_kernel,
            signature=signature_for(_decode_merge_kernel, {"Out": f"*{out_dtype}"}, "*fp32", constexprs=const),
            constexprs=const, num_warps=1 if bd <= 64 else 2, num_stages=1, config=dict(dtype=out_dtype, BLOCK_DV=bd),
            divisible_by_16=("OPart", "LSEPart", "Out", "LSE"),
        ))
    return cases
