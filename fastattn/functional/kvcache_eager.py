"""The short route of :func:`fastattn.flash_attn_with_kvcache` for a plain eager decoding step on
the CPU: a model's ``generate`` calls it once per layer and token, with a few microseconds of
kernel work each time, so the call's own Python decides its speed.

:func:`decode_step` runs the call when a handful of cheap tests prove the arguments valid and
plain (CPU tensors of one dtype the native kernel takes, a few query rows, no paging, index,
rotary, ALiBi, window or sink; nothing a tracer watches) and returns ``None`` otherwise, and the
caller then takes the full path, whose checks raise the errors. It never decides an error
itself: every test here is one under which the full path's checks pass, so an argument either
passes both or is left to the full path.

It computes what the full path computes: the same crossover decision for ``auto``
(:mod:`fastattn.backends.cpu.decode_crossover`), the same append and decoding kernel on the same
arguments (:func:`fastattn.backends.cpu.kvcache.eager_decode`, which the ``cpu`` backend's
``kvcache_fwd`` carries as an attribute), the caches' version counters bumped by the append as
the custom op's in-place contract asks. What it skips is
the work that a plain call does not need: the options record and backend selection, the index
tensors, the custom op's argument list and output views.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastattn import dispatch
from fastattn import validation as check
from fastattn.backends.cpu import decode_crossover as crossover

_Tensor = torch.Tensor
_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_HEAD_DIM = 256


def _eager_decode():
    """The ``eager_decode`` of the ``cpu`` backend's ``kvcache_fwd`` (an attribute of the
    implementation dispatch holds), or ``None`` where that backend cannot run here or its
    implementation is a stand-in without one (``dispatch.register``)."""
    impl = dispatch.available_implementation("kvcache_fwd", "cpu", "cpu")
    return None if impl is None else getattr(impl.fn, "eager_decode", None)


def _lengths(cache_seqlens, batch: int, capacity: int, new: int) -> Optional[list[int]]:
    """Each sequence's cached tokens as a list, when ``cache_seqlens`` has a form the full path
    accepts (``None``: the whole cache; an int; an int32/int64 CPU ``(batch,)``), else ``None``.
    A tensor's values are checked as the op checks them (the same error); an int out of range
    is left to the full path."""
    if cache_seqlens is None:
        return None if new else [capacity] * batch
    if type(cache_seqlens) is int:
        return [cache_seqlens] * batch if 0 <= cache_seqlens <= capacity - new else None
    if (type(cache_seqlens) is _Tensor and cache_seqlens.is_cpu and cache_seqlens.dim() == 1
            and cache_seqlens.shape[0] == batch and cache_seqlens.dtype in (torch.int32, torch.int64)):
        check.cache_seqlens_values(cache_seqlens, new, capacity)
        return cache_seqlens.tolist()
    return None


def decode_step(q, k_cache, v_cache, k, v, cache_seqlens, softmax_scale, causal, window_size, softcap, num_splits,
                return_softmax_lse, backend):
    """``flash_attn_with_kvcache``'s result for these arguments (the ones not named here at
    their defaults), or ``None`` when this route does not take the call (see the module)."""
    if torch.compiler.is_compiling():  # first: Dynamo folds it and traces nothing below
        return None
    if type(q) is not _Tensor or type(k_cache) is not _Tensor or type(v_cache) is not _Tensor:
        return None
    dtype = q.dtype
    q_shape, k_shape, v_shape = q.shape, k_cache.shape, v_cache.shape
    if (dtype not in _NATIVE_DTYPES or k_cache.dtype is not dtype or v_cache.dtype is not dtype
            or len(q_shape) != 4 or len(k_shape) != 4 or len(v_shape) != 4
            or not (q.is_cpu and k_cache.is_cpu and v_cache.is_cpu)):
        return None
    batch, seqlen_q, heads, head_dim = q_shape
    batch_c, capacity, heads_k, head_dim_k = k_shape
    head_dim_v = v_shape[3]
    k_strides, v_strides = k_cache.stride(), v_cache.stride()
    if not (batch_c == batch >= 1 and v_shape[:3] == k_shape[:3] and head_dim_k == head_dim
            and 1 <= head_dim <= _MAX_HEAD_DIM and 1 <= head_dim_v <= _MAX_HEAD_DIM and heads_k >= 1
            and heads % heads_k == 0 and q.stride(3) == 1 and k_strides[3] == 1 and v_strides[3] == 1
            and 0 not in k_strides and 0 not in v_strides):  # no stride 0: the caches are writable
        return None
    if not ((softmax_scale is None or type(softmax_scale) is float) and (causal is True or causal is False)
            and type(window_size) is tuple and window_size == (-1, -1)
            and (type(softcap) is float or type(softcap) is int) and softcap >= 0
            and type(num_splits) is int and num_splits >= 0
            and (return_softmax_lse is True or return_softmax_lse is False)):
        return None
    if backend is None:
        backend = dispatch.current_backend()
    if backend != "auto" and backend != "cpu":
        return None
    new = 0
    if k is not None or v is not None:
        if not (type(k) is _Tensor and type(v) is _Tensor and k.is_cpu and v.is_cpu and k.dtype is dtype
                and v.dtype is dtype and k.dim() == 4 and v.dim() == 4):
            return None
        new = k.shape[1]
        if not (k.shape == (batch, new, heads_k, head_dim) and v.shape == (batch, new, heads_k, head_dim_v)
                and k.stride(3) == 1 and v.stride(3) == 1):
            return None
    eager_decode = _eager_decode()
    # Lastly the checks that read values or machine state: no tracer watching, the kernel here.
    if eager_decode is None or seqlen_q < 1 or torch._C._len_torch_dispatch_stack() != 0:
        return None
    lens = _lengths(cache_seqlens, batch, capacity, new)
    if lens is None:
        return None

    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale
    if backend == "auto" and seqlen_q == 1 and softcap == 0 and dtype is not torch.float16:
        # The measured crossover (one query row, no option the table does not measure).
        if crossover.prefer_torch(dtype, heads // heads_k, max(lens) + new, head_dim, batch * heads_k):
            tensor_lens = torch.tensor(lens, dtype=torch.int32)
            out, lse = crossover.torch_decode(q, k_cache, v_cache, k, v, tensor_lens, scale)
            return (out, lse) if return_softmax_lse else out
    # The append is in place: its copies bump the caches' version counters, as the op's contract asks.
    result = eager_decode(q, k_cache, v_cache, k, v, lens, scale=float(scale), causal=causal, softcap=float(softcap))
    if result is None:
        return None
    return result if return_softmax_lse else result[0]
