"""Input validation shared by every public op.

Every check raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (wrong shape, value or layout) naming the argument and the
expected form, before any kernel is launched. The public functions call these
first; kernels and launchers never re-validate.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256
ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh")
GELU_APPROXIMATIONS = ("none", "tanh")


def tensor(name: str, x, *, ndim: Optional[int | Sequence[int]] = None, min_ndim: int = 0,
           dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    """``x`` must be a tensor of one of ``dtypes`` with ``ndim`` (or at least ``min_ndim``) dims."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(x.dtype).replace('torch.', '')}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ValueError(f"{name} must be {' or '.join(f'{n}-D' for n in allowed)}, got shape {tuple(x.shape)}")
    if x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")
    return x


def same_dtype(names: Sequence[str], *xs: torch.Tensor) -> None:
    """Every tensor in ``xs`` shares the first one's dtype."""
    for name, x in zip(names[1:], xs[1:]):
        if x.dtype != xs[0].dtype:
            raise TypeError(f"{name} must have the same dtype as {names[0]} ({xs[0].dtype}), got {x.dtype}")


def same_device(names: Sequence[str], *xs: Optional[torch.Tensor]) -> None:
    """Every tensor in ``xs`` (``None`` skipped) lives on the first one's device."""
    ref = xs[0].device
    for name, x in zip(names[1:], xs[1:]):
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(x).__name__}")
        if x is not None and x.device != ref:
            raise ValueError(f"{name} must be on the same device as {names[0]} ({ref}), got {x.device}")


def dim_equal(name: str, what: str, got: int, expected: int, expected_from: str) -> None:
    if got != expected:
        raise ValueError(f"{name} must have {what} {expected} (as {expected_from}), got {got}")


def head_dim(name: str, d: int, maximum: Optional[int] = None) -> None:
    """A head dim in ``[1, maximum]`` (the flash-attn API's kernels cover 1..256, as flash-attn)."""
    if d < 1 or (maximum is not None and d > maximum):
        bound = f"in [1, {maximum}]" if maximum is not None else ">= 1"
        raise ValueError(f"{name} must have a head dim (last dim) {bound}, got {d}")


def gqa_heads(q_name: str, heads_q: int, kv_name: str, heads_kv: int) -> None:
    """Query heads must be a positive multiple of the key/value heads (GQA/MQA)."""
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(
            f"{q_name} has {heads_q} heads, which must be a multiple of {kv_name}'s {heads_kv} heads (GQA/MQA)"
        )


def probability(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return float(p)


def optional_scale(name: str, scale) -> Optional[float]:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name} must be a float or None, got {type(scale).__name__}")
    return float(scale)


def boolean(name: str, value) -> bool:
    if not isinstance(value, (bool, int)) or isinstance(value, float):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def choice(name: str, value, options: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {tuple(options)}; got {type(value).__name__}")
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def mask(name: str, m, query_dtype: torch.dtype, target_shape: Sequence[int], *, allow_grad: bool = True,
         bool_meaning: str = "True = takes part") -> None:
    """An attention mask: bool or a float of the query's dtype (torch's rule), broadcastable
    to ``target_shape``. Integer masks are rejected (ambiguous: index or weight?).
    ``bool_meaning`` names the op's bool convention in the error message."""
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(m).__name__}")
    if m.dtype != torch.bool and not m.is_floating_point():
        raise TypeError(
            f"{name} must be a bool tensor ({bool_meaning}) or a float tensor added to the scores, "
            f"got {str(m.dtype).replace('torch.', '')}"
        )
    if m.is_floating_point() and m.dtype != query_dtype:
        raise TypeError(f"a float {name} must have the query's dtype ({query_dtype}), got {m.dtype}")
    try:
        torch.broadcast_shapes(tuple(m.shape), tuple(target_shape))
        if m.dim() > len(target_shape):
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(m.shape)} must be broadcastable to {tuple(target_shape)}"
        ) from None


def window_size(name: str, window) -> tuple[int, int]:
    """flash-attn's ``window_size=(left, right)``, -1 meaning unbounded."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(f"{name} must be a pair (left, right) of ints (-1 = unbounded), got {window!r}")
    out = []
    for w in window:
        if isinstance(w, bool) or not isinstance(w, numbers.Integral):
            raise TypeError(f"{name} must be a pair (left, right) of ints (-1 = unbounded), got {window!r}")
        if w < -1:
            raise ValueError(f"{name} entries must be >= -1 (-1 = unbounded), got {window!r}")
        out.append(int(w))
    return out[0], out[1]


def softcap(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float >= 0 (0 = off), got {type(value).__name__}")
    if not value >= 0:  # written so that NaN fails too
        raise ValueError(f"{name} must be >= 0 (0 = off), got {value}")
    return float(value)


def alibi_slopes(name: str, slopes, batch: int, heads: int, device: torch.device) -> None:
    """``(heads,)`` or ``(batch, heads)``, float32 (flash-attn's rule)."""
    if slopes is None:
        return
    tensor(name, slopes, ndim=(1, 2), dtypes=(torch.float32,))
    if tuple(slopes.shape) not in ((heads,), (batch, heads)):
        raise ValueError(f"{name} must have shape ({heads},) or ({batch}, {heads}), got {tuple(slopes.shape)}")
    same_device(("query", name), torch.empty(0, device=device), slopes)


def cu_seqlens(name: str, cu, max_seqlen, max_name: str, device: torch.device) -> torch.Tensor:
    """Cumulative sequence lengths ``(n + 1,)``: an integer tensor on ``device``, and
    ``max_seqlen`` an int. Returns them as int32. Checks metadata only, so that the call
    traces under ``torch.compile`` and never syncs a GPU; the values are checked by
    :func:`cu_seqlens_values` inside the op, where they are concrete."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor of shape (batch + 1,), got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer (int32) tensor, got {str(cu.dtype).replace('torch.', '')}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D with batch + 1 >= 2 entries, got shape {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} must be on the same device as the inputs ({device}), got {cu.device}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"{max_name} must be an int, got {type(max_seqlen).__name__}")
    return cu.to(torch.int32)


def reads_values_now(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether a check may read tensor *values* on the host: not while a CUDA graph is being
    captured (a device-to-host copy is illegal there; the caller's eager run was checked)."""
    return not any(t is not None and t.is_cuda and torch.cuda.is_current_stream_capturing() for t in tensors)


def cu_seqlens_values(name: str, cu: torch.Tensor, total: int, max_seqlen: int, max_name: str) -> None:
    """The values of ``cu`` ``(n + 1,)``: starting at 0, non-decreasing, ending at ``total``, with
    ``max_seqlen`` (0 = unknown) at least the longest sequence. Called by the attention op
    itself before a kernel runs, so that eager and compiled calls are both checked."""
    values = cu.tolist()
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be non-decreasing (cumulative lengths), got {values}")
    if values[-1] != total:
        raise ValueError(f"{name} must end at the packed token count {total}, got {values[-1]}")
    longest = max(b - a for a, b in zip(values, values[1:]))
    if 0 < max_seqlen < longest:
        raise ValueError(f"{max_name} ({max_seqlen}) must be >= the longest sequence in {name} ({longest})")


def cache_seqlens_values(lens: torch.Tensor, new: int, seqlen_cache: int) -> None:
    """``cache_seqlens`` ``(B,)`` plus ``new`` appended tokens must lie in ``[0, seqlen_cache]``.
    Called by the KV-cache op itself before a kernel runs (see :func:`cu_seqlens_values`)."""
    lo, hi = int(lens.min()), int(lens.max())
    if lo < 0 or hi + new > seqlen_cache:
        raise ValueError(f"cache_seqlens (+ {new} new tokens) must lie in [0, {seqlen_cache}] (the cache "
                         f"length), got values in [{lo}, {hi}]")


def last_dim_contiguous(name: str, x: torch.Tensor) -> None:
    """A tensor the kernels address in place (no copy possible, e.g. a KV cache written in
    place) must have a unit stride along its last dim, as flash-attn requires."""
    if x.dim() > 0 and x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {tuple(x.stride())}")


def writable(name: str, x: torch.Tensor) -> None:
    """A tensor written in place must not overlap itself (no stride-0 or aliasing dims)."""
    # torch's own definite-overlap rule (at::has_internal_overlap == YES), from sizes and
    # strides alone so that torch.compile traces it.
    if any(stride == 0 and size > 1 for size, stride in zip(x.shape, x.stride())):
        raise ValueError(f"{name} is written in place and must not have overlapping memory (e.g. expand()ed)")


def learnable_sink(name: str, sink, heads: int, device: torch.device) -> Optional[torch.Tensor]:
    """Attention-sink logits: a float ``(heads,)`` tensor (one per query head) on ``device``."""
    if sink is None:
        return None
    tensor(name, sink, ndim=1, dtypes=(torch.float32, torch.bfloat16, torch.float16))
    if sink.shape[0] != heads:
        raise ValueError(f"{name} must have shape ({heads},) (one logit per query head), got {tuple(sink.shape)}")
    same_device(("q", name), torch.empty(0, device=device), sink)
    return sink
