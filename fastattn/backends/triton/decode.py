"""The ``triton`` backend of ``kvcache_fwd``: :mod:`fastattn.kernels.decode` (split-KV
flash-decoding) behind :func:`fastattn.flash_attn_with_kvcache`.

fp16, bf16 and fp32; head dims up to 256 (``q``'s and ``v_cache``'s); GQA/MQA; causal,
windows (bottom-right), softcap, ALiBi; new keys/values appended in place. Paged caches
(``block_table``), ``cache_batch_idx`` and ``cache_leftpad`` are addressed in the kernels
themselves (``native_paging``): pages are read and written in place, never gathered. CUDA
tensors need a GPU; CPU tensors run on the Triton interpreter (``TRITON_INTERPRET=1``), as the
availability rule of :mod:`fastattn.backends.triton.attention` says.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn.kernels import decode as _kernels

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256


def supports(q, k_cache, v_cache, k_new=None, v_new=None, cache_seqlens=None, *, alibi_slopes=None,
             args=None) -> Optional[str]:
    """``None`` if the Triton decoding kernels compute this call, else the reason."""
    for t in (q, k_cache, v_cache, k_new, v_new):
        if t is not None and t.dtype not in _DTYPES:
            return f"the Triton decoding kernels take float16, bfloat16 or float32, got {str(t.dtype).replace('torch.', '')}"
    if max(q.shape[-1], v_cache.shape[-1]) > _MAX_HEAD_DIM:
        return f"head dims over {_MAX_HEAD_DIM}"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("k", k_new), ("v", v_new)):
        if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
            return f"{name} with a non-contiguous last dim"
    if alibi_slopes is not None and alibi_slopes.dim() not in (1, 2):
        return "alibi_slopes must be (Hq,) or (B, Hq)"
    if args is not None and (args.dropout_p > 0 or not args.bottom_right):
        return "dropout or top-left alignment in KV-cache decoding"
    return None


# The kernels' launcher is the backend's implementation itself (the core op calls it with the
# backend signature), so that a call reaches the launch through no adaptor frame.
kvcache_fwd = _kernels.kvcache_fwd
kvcache_fwd.native_paging = True  # the core op passes block_table/cache_batch_idx/cache_leftpad as they are


OPS = {"kvcache_fwd": (kvcache_fwd, supports)}
