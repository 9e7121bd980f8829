"""The ``cpu`` backend of ``kvcache_fwd``: decoding against a KV cache on the native CPU
attention of :mod:`fastattn.backends.cpu.attention` (``csrc/cpu/attention*.cpp``), behind
:func:`fastattn.flash_attn_with_kvcache`.

The new keys/values are appended in place with one indexed copy. Then:

* up to :data:`DECODE_MAX_QUERY_ROWS` query rows (decoding, short speculative drafts): one
  call of the decoding kernel (``csrc/cpu/decode_impl.h``) for the whole batch, which reads
  the caches in place (no repacking), each batch element over its own ``cache_seqlens[b] +
  Lnew`` keys, every query head of a GQA group served by one pass over its kv head's keys,
  and long caches split across threads with the partial results merged by their LSE;
* more rows: the native forward attention, one call per run of consecutive batch elements
  with the same number of keys ``n``, on strided views ``q[b0:b1]`` ``(nb, Hq, Lq, D)`` and
  ``k_cache[b0:b1, :n]`` ``(nb, Hk, n, D)`` (no copy), with causal/window aligned
  bottom-right, writing straight into slices of one output (a few calls when large, see
  below).

Batch elements with no key at all get an output of 0 and an LSE of +inf, as flash-attn gives.

Covered (``supports`` returns ``None``): what the native attention covers (CPU tensors,
fp32/bf16/fp16, head dims 1 to 256, GQA/MQA, softcap, windows, ALiBi ``(Hq,)`` or
``(B, Hq)`` fp32, any strides). Not covered: float64, dropout and top-left alignment
(``supports`` says why; ``auto`` falls back to the reference backend).

Cost of the forward path: the native forward first packs every key block it will read (K
transposed, V widened to fp32 unless bf16 dot products are used) into one fresh buffer,
then computes. That pass is amortised over the ``Lq * Hq / Hk`` query rows that share each
kv head (hence few rows go to the decoding kernel instead). Two things keep it cheap here: each native call covers at most
``PACK_BUDGET_BYTES`` of packed keys/values (whole batch elements, else groups of kv
heads), and a sliding window starts the views at its first visible key, so the part of
the cache it never reaches is not packed at all.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn._dtype_codes import DTYPE_CODES
from fastattn.backends.cpu import attention as cpu_attention

PACK_BUDGET_BYTES = 16 << 20
"""Most packed K/V bytes one native call may allocate. glibc serves a request above its
mmap threshold (which adapts up to 32 MiB) with fresh pages that the OS zeroes and faults
in on every call; below it the freed buffer is reused from the heap. Measured on 2 cores,
b4 h8 L2048 d128 fp32 decoding (a 64 MiB pack): 42 ms as one call, 20 ms as four."""
_BLOCK_K = 128  # keys per packed block in csrc/cpu/attention_impl.h (kBK)
DECODE_MAX_QUERY_ROWS = 8
"""Most query rows per sequence that go to the decoding kernel (``csrc/cpu/decode_impl.h``),
which reads the caches in place; longer queries (chunked prefill, speculative verification
of many tokens) share each packed key block among enough rows to take the forward kernel."""


def supports(q, k_cache, v_cache, k_new=None, v_new=None, cache_seqlens=None, *, alibi_slopes=None,
             args=None) -> Optional[str]:
    """``None`` if the native CPU attention computes this ``kvcache_fwd`` call, else the reason.

    ``q`` ``(B, Lq, Hq, D)``, caches ``(B, Lcache, Hk, D | Dv)``, ``k_new``/``v_new``
    ``(B, Lnew, Hk, D | Dv)`` or ``None``, ``cache_seqlens`` int32 ``(B,)``; shapes were
    validated by the public op.
    """
    if args is not None and (args.dropout_p > 0 or not args.bottom_right):
        return "dropout or top-left alignment in KV-cache decoding"
    for name, t in (("k", k_new), ("v", v_new), ("cache_seqlens", cache_seqlens)):
        if t is not None and t.device.type != "cpu":
            return f"{name} is not a CPU tensor"
    for name, t in (("k", k_new), ("v", v_new)):
        if t is not None and t.dtype != q.dtype:
            return f"{name} of dtype {t.dtype} with q of dtype {q.dtype}"
    # The calls kvcache_fwd makes are on these views (a prefix of the cache rows, same strides).
    return cpu_attention.supports(q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2),
                                  alibi_slopes=alibi_slopes, args=args)


def _append(k_cache, v_cache, k_new, v_new, lens: list[int]) -> None:
    """Write ``k_new``/``v_new`` ``(B, Lnew, Hk, D)`` into the caches at rows ``lens[b] .. lens[b]
    + Lnew`` of each batch element, in place: one slice copy each when every sequence holds as
    many tokens (a uniform batch), else one per sequence."""
    new = k_new.shape[1]
    if all(n == lens[0] for n in lens):
        k_cache[:, lens[0]:lens[0] + new] = k_new
        v_cache[:, lens[0]:lens[0] + new] = v_new
        return
    for b, n in enumerate(lens):
        k_cache[b, n:n + new] = k_new[b]
        v_cache[b, n:n + new] = v_new[b]


def _runs(counts: list[int]):
    """``(b0, b1, n)`` for each maximal run of consecutive batch elements with ``n`` keys."""
    b0 = 0
    for b in range(1, len(counts) + 1):
        if b == len(counts) or counts[b] != counts[b0]:
            yield b0, b, counts[b0]
            b0 = b


def _pieces(b0: int, b1: int, keys: int, heads_k: int, dims: int):
    """Split batch elements ``[b0, b1)`` (``keys`` keys each) into native calls
    ``(b0, b1, hk0, hk1)`` whose packed K/V stays within :data:`PACK_BUDGET_BYTES`: several
    whole batch elements per call, or kv heads ``[hk0, hk1)`` of one when it alone is over."""
    # Upper bound of the native pack per (batch element, kv head): whole key blocks, fp32,
    # ``dims = D + Dv`` padded to 16 each (the bf16 layout is smaller).
    per_head = -(-keys // _BLOCK_K) * _BLOCK_K * dims * 4
    per_batch = per_head * heads_k
    if per_batch <= PACK_BUDGET_BYTES:
        step = PACK_BUDGET_BYTES // per_batch
        for b in range(b0, b1, step):
            yield b, min(b + step, b1), 0, heads_k
        return
    step = max(1, PACK_BUDGET_BYTES // per_head)
    for b in range(b0, b1):
        for h in range(0, heads_k, step):
            yield b, b + 1, h, min(h + step, heads_k)


def _first_visible_key(n: int, seqlen_q: int, args) -> int:
    """The first key any query row can see: keys before it lie left of every row's window.

    Starting the views there is exact, not an approximation: bottom-right alignment and
    ALiBi depend only on ``i + (n - Lq) - j``, which dropping ``j0`` keys from the front (so
    ``n -> n - j0`` and ``j -> j - j0``) leaves unchanged. It saves reading (and the kernel
    packing) the part of a long cache that a sliding window never reaches.
    """
    if args.window_left < 0:
        return 0
    return max(0, n - seqlen_q - args.window_left)


def _decodes(q, k_cache, v_cache) -> bool:
    """Whether the decoding kernel takes this call: a few query rows, caches whose head dim
    is contiguous (it reads their rows as vectors; the public op guarantees it)."""
    return q.shape[1] <= DECODE_MAX_QUERY_ROWS and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1


def decode_into(q, k_cache, v_cache, kv_lens, out, lse, *, scale: float, causal: bool, window_left: int = -1,
                window_right: int = -1, softcap: float = 0.0, alibi_slopes=None) -> None:
    """One call of the decoding kernel (``csrc/cpu/decode_impl.h``) for the whole batch: ``q``
    ``(B, Lq, Hq, D)`` (``Lq <=`` :data:`DECODE_MAX_QUERY_ROWS`) against the first ``kv_lens[b]``
    rows of ``k_cache``/``v_cache`` ``(B, Lcache, Hk, D | Dv)``, every tensor read in place by its
    strides (the caches' last dim contiguous), causal and windows aligned bottom-right; writes
    ``out`` ``(B, Lq, Hq, Dv)`` (q's dtype) and ``lse`` fp32 ``(B, Hq, Lq)``. ``kv_lens``: a list
    of ``B`` ints; ``alibi_slopes``: fp32 ``(Hq,)`` or ``(B, Hq)`` or ``None``.

    The kernel's spec is built here from sizes and strides alone (no view, no temporary): a
    decoding step of a small model does a few microseconds of work, so its call costs count."""
    batch, seqlen_q, heads, head_dim = q.shape
    _, seqlen_k, heads_k, _ = k_cache.shape
    qs, ks, vs, os_, ls = q.stride(), k_cache.stride(), v_cache.stride(), out.stride(), lse.stride()
    # (ptr, stride_b, stride_h, stride_l, stride_d): the kernel's (B, H, L, D) order.
    spec = dict(
        dtype=DTYPE_CODES[q.dtype], batch=batch, heads_q=heads, heads_k=heads_k, seqlen_q=seqlen_q,
        seqlen_k=seqlen_k, head_dim=head_dim, head_dim_v=v_cache.shape[3],
        q=(q.data_ptr(), qs[0], qs[2], qs[1], qs[3]), k=(k_cache.data_ptr(), ks[0], ks[2], ks[1], ks[3]),
        v=(v_cache.data_ptr(), vs[0], vs[2], vs[1], vs[3]), out=(out.data_ptr(), os_[0], os_[2], os_[1], os_[3]),
        lse=(lse.data_ptr(), ls[0], ls[1], ls[2], 0), kv_lens=kv_lens,
        scale=scale, softcap=softcap, causal=causal, bottom_right=True, window_left=window_left,
        window_right=window_right, num_threads=torch.get_num_threads(),
    )
    if alibi_slopes is not None:
        spec["alibi"] = cpu_attention.alibi_spec(alibi_slopes)
    cpu_attention._C.cpu_decode_fwd(spec)


def kvcache_fwd(q, k_cache, v_cache, k_new, v_new, cache_seqlens, *, alibi_slopes, args):
    """Core op ``kvcache_fwd`` on the CPU (contract: :data:`fastattn.dispatch.OP_SIGNATURES`).

    Appends ``k_new``/``v_new`` (if given) to the caches in place at rows
    ``cache_seqlens[b] ..``, then attends ``q`` ``(B, Lq, Hq, D)`` over the first
    ``cache_seqlens[b] + Lnew`` rows of each cache. Returns ``out`` ``(B, Lq, Hq, Dv)`` in
    q's dtype and ``lse`` fp32 ``(B, Hq, Lq)`` (+inf and output 0 for rows that see no key).
    """
    batch, seqlen_q, heads, _ = q.shape
    lens = cache_seqlens.tolist()  # CPU tensor: no device sync involved
    new = 0
    if k_new is not None and k_new.shape[1] > 0:
        new = k_new.shape[1]
        _append(k_cache, v_cache, k_new, v_new, lens)
    out = torch.empty(batch, seqlen_q, heads, v_cache.shape[-1], dtype=q.dtype)
    lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if _decodes(q, k_cache, v_cache):
        decode_into(q, k_cache, v_cache, [n + new for n in lens], out, lse, scale=float(args.scale),
                    causal=bool(args.causal), window_left=int(args.window_left), window_right=int(args.window_right),
                    softcap=float(args.softcap), alibi_slopes=alibi_slopes)
        return out, lse
    heads_k = k_cache.shape[2]
    group = heads // heads_k
    dims = -(-k_cache.shape[-1] // 16) * 16 + -(-v_cache.shape[-1] // 16) * 16
    counts = [n + new for n in lens]
    for b0, b1, n in _runs(counts):
        j0 = _first_visible_key(n, seqlen_q, args)
        if n - j0 <= 0:  # no key at all: flash-attn's empty-row convention
            out[b0:b1].zero_()
            lse[b0:b1].fill_(float("inf"))
            continue
        for c0, c1, hk0, hk1 in _pieces(b0, b1, n - j0, heads_k, dims):
            h0, h1 = hk0 * group, hk1 * group  # the query heads of kv heads [hk0, hk1)
            # (nb, H, L, D) strided views throughout: no copy of q or of the caches.
            qv = q[c0:c1, :, h0:h1].transpose(1, 2)
            kv = k_cache[c0:c1, j0:n, hk0:hk1].transpose(1, 2)
            vv = v_cache[c0:c1, j0:n, hk0:hk1].transpose(1, 2)
            slopes = None
            if alibi_slopes is not None:
                slopes = alibi_slopes[h0:h1] if alibi_slopes.dim() == 1 else alibi_slopes[c0:c1, h0:h1]
            # The native call writes straight into slices of the one output (hence its spec
            # is built here, with cpu_attention's helpers, rather than by its attention_fwd).
            spec = cpu_attention._spec(qv, kv, vv, None, slopes, None, None, args, [])
            spec.update(out=cpu_attention._t(out[c0:c1, :, h0:h1].transpose(1, 2)),
                        lse=cpu_attention._t(lse[c0:c1, h0:h1]))
            cpu_attention._C.cpu_attention_fwd(spec)
    return out, lse


def eager_decode(q, k_cache, v_cache, k_new, v_new, lens: list[int], *, scale: float, causal: bool,
                 softcap: float):
    """The native part of a plain eager decoding step (the short route of
    :mod:`fastattn.functional.kvcache_eager`, which validated every argument): ``k_new``/``v_new``
    ``(B, Lnew, Hk, D)`` or ``None`` appended at rows ``lens[b] ..`` (a list of ``B`` ints), then
    the decoding kernel over each sequence's ``lens[b] + Lnew`` keys, no window or ALiBi.
    Returns ``(out (B, Lq, Hq, Dv), lse fp32 (B, Hq, Lq))``, or ``None``, having done nothing,
    when the query has more rows than the decoding kernel takes."""
    batch, seqlen_q, heads, _ = q.shape
    if seqlen_q > DECODE_MAX_QUERY_ROWS:
        return None
    new = 0 if k_new is None else k_new.shape[1]
    if new:
        _append(k_cache, v_cache, k_new, v_new, lens)
    out = torch.empty((batch, seqlen_q, heads, v_cache.shape[3]), dtype=q.dtype)
    lse = torch.empty((batch, heads, seqlen_q), dtype=torch.float32)
    decode_into(q, k_cache, v_cache, [n + new for n in lens] if new else lens, out, lse, scale=scale, causal=causal,
                window_right=0 if causal else -1, softcap=softcap)
    return out, lse


# Dispatch holds kvcache_fwd; the short route finds the eager step through it (a stand-in
# registered in its place has none, and its calls take the full path).
kvcache_fwd.eager_decode = eager_decode

OPS = {"kvcache_fwd": (kvcache_fwd, supports)}
