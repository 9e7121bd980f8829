"""Where ``auto`` decodes on the CPU: fastattn's native kernel or torch's own flash CPU kernel.

``auto`` must never pick a fastattn CPU kernel where torch's own is faster. For KV-cache
decoding that is decided by a measured table, ``decode_crossover.json`` next to this file,
written by ``python benchmarks/bench_cpu_crossover.py --write`` (or extended by ``--merge``;
each entry: the ratio of torch's median time to fastattn's, measured side by side in one
process, on the machine and ISA it names, with the thread count, batch, heads and head dim of
the case). :func:`prefer_torch` looks up the entry nearest to a call (same dtype; nearest thread
count, query-head group, head dim and batch x kv heads in turn; then nearest cache length);
:func:`torch_decode` is then the call on
``aten._scaled_dot_product_flash_attention_for_cpu``, torch's flash CPU kernel, which also
returns the LSE.

Only plain decoding takes this path (one query row, no window, softcap, ALiBi or sink, the
caches in the layout the public op validated); everything else stays on the native kernel.
"""
from __future__ import annotations

import bisect
import functools
import math

import torch

from fastattn.backends.cpu.measured_table import MeasuredTable

TABLE = MeasuredTable("decode_crossover.json")


def prefer_torch(dtype: torch.dtype, group: int, keys: int, head_dim: int = 128, kv_heads: int = 32) -> bool:
    """Whether torch's flash CPU kernel decoded faster than fastattn's native one in the measured
    case nearest to this one, at ``torch.get_num_threads()`` threads: the same dtype, then in turn
    the nearest thread count, query heads per kv head (``group``), head dim and number of
    ``kv_heads`` (batch times kv heads: the independent pieces of work), then the nearest cache
    length ``keys``, each on a log scale. No measurement: fastattn's kernel."""
    bounds, decisions = _by_keys(dtype, torch.get_num_threads(), group, head_dim, kv_heads)
    if not decisions:
        return False
    return decisions[bisect.bisect(bounds, math.log(max(keys, 1)))]


@functools.lru_cache(maxsize=256)
def _by_keys(dtype: torch.dtype, threads: int, group: int, head_dim: int, kv_heads: int):
    """The measured cases that answer for calls of this kind, one per cache length: ``(bounds,
    decisions)``, the log-scale midpoints between consecutive measured lengths and each
    length's decision. Cached per kind: a model's decoding asks for every layer of every step
    with a key count one larger each step, answered by one bisection."""
    name = str(dtype).replace("torch.", "")
    rows = [e for e in TABLE.entries() if e["dtype"] == name]
    for want, value in ((threads, lambda e: e["threads"]), (group, lambda e: e["group"]),
                        (head_dim, lambda e: e["head_dim"]), (kv_heads, lambda e: e["batch"] * e["heads_k"])):
        if not rows:
            break
        nearest = min({value(e) for e in rows}, key=lambda v: abs(math.log(v / max(want, 1))))
        rows = [e for e in rows if value(e) == nearest]
    lengths = sorted({e["keys"] for e in rows})
    decisions = [next(e for e in rows if e["keys"] == n)["torch_over_fastattn"] < 1.0 for n in lengths]
    bounds = [(math.log(a) + math.log(b)) / 2 for a, b in zip(lengths, lengths[1:])]
    return bounds, decisions


def eligible(q, k_new, args, alibi_slopes, learnable_sink) -> bool:
    """Plain single-row decoding, the one case the crossover table measures. (Causal is: one
    query row aligned bottom-right sees every key, so ``window_right = 0`` masks nothing.)"""
    return (q.device.type == "cpu" and q.shape[1] == 1 and q.dtype in (torch.float32, torch.bfloat16)
            and alibi_slopes is None and learnable_sink is None and args.softcap == 0
            and args.window_left < 0 and (args.window_right < 0 or args.window_right == 0 and args.bottom_right))


def torch_decode(q, k_cache, v_cache, k_new, v_new, lens, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` ``(B, 1, Hq, D)`` against the first ``lens[b] (+ Lnew)`` rows of ``k_cache``/``v_cache``
    ``(B, Lcache, Hk, D)`` (``k_new``/``v_new`` appended in place first), on torch's flash CPU
    kernel, one call per run of batch elements with the same key count. Returns ``(out (B, 1, Hq,
    Dv), lse fp32 (B, Hq, 1))``; a sequence with no key gives 0 and ``+inf``, as fastattn's."""
    batch, _, heads, _ = q.shape
    heads_k = k_cache.shape[2]
    new = 0 if k_new is None else k_new.shape[1]
    if new:
        rows = lens.long()[:, None] + torch.arange(new)[None, :]
        where = (torch.arange(batch)[:, None].expand_as(rows), rows)
        k_cache.index_put_(where, k_new)
        v_cache.index_put_(where, v_new)
    counts = [n + new for n in lens.tolist()]
    out = q.new_zeros(batch, 1, heads, v_cache.shape[-1])
    lse = torch.full((batch, heads, 1), float("inf"))
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    b0 = 0
    while b0 < batch:
        b1 = b0 + 1
        while b1 < batch and counts[b1] == counts[b0]:
            b1 += 1
        n = counts[b0]
        if n > 0:
            k = k_cache[b0:b1, :n].transpose(1, 2)
            v = v_cache[b0:b1, :n].transpose(1, 2)
            if heads != heads_k:  # the kernel takes no groups: one kv head per query head
                k, v = (t.repeat_interleave(heads // heads_k, dim=1) for t in (k, v))
            o, l = flash(q[b0:b1].transpose(1, 2), k, v, 0.0, False, scale=scale)
            out[b0:b1] = o.transpose(1, 2)
            lse[b0:b1] = l.float()
        b0 = b1
    return out, lse

