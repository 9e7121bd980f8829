"""The benchmark cases of ``python -m fastattn bench`` and ``benchmarks/``, and their presets.

A case is a frozen dataclass with a ``family`` (``attention``, ``kvcache``, ``activation``,
``feed_forward``), its shape and dtype, ``make_inputs(device, requires_grad)`` and the
work it does (``flops()``/``nbytes()``). :func:`preset` gives the case list of
``--quick``, the default, and ``--full`` for a device type (GPU sizes follow flash-attn's
benchmark: 16k tokens per batch, ``heads * head_dim = 2048``; CPU sizes are scaled so
that ``--quick`` finishes in under a minute on two cores).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from . import measure

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _randn(shape, dtype, device, requires_grad=False, scale=1.0):
    t = (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(DTYPES[dtype])
    return t.requires_grad_(requires_grad)


class _Case:
    """What every benchmark case has besides its fields: the JSON record of itself."""

    name: str  # each case defines it as a property

    def as_dict(self) -> dict:
        """The case's fields and its name, as the bench JSON records them."""
        return {**asdict(self), "case": self.name}


@dataclass(frozen=True)
class AttentionCase(_Case):
    """Self-attention ``(batch, heads, seqlen, head_dim)`` with ``heads_k`` key/value heads (GQA)."""

    batch: int
    heads: int
    heads_k: int
    seqlen: int
    head_dim: int
    causal: bool
    dtype: str
    direction: str = "fwd"
    family: str = "attention"
    metric: str = "TFLOP/s"

    @property
    def name(self) -> str:
        """The case's label in tables and ``--filter`` (every case class has the same protocol:
        ``name``, ``make_inputs``, ``flops``, ``nbytes``, ``x`` for the plot, ``as_dict``)."""
        gqa = f"/{self.heads_k}kv" if self.heads_k != self.heads else ""
        return (f"attn {self.direction} b{self.batch} h{self.heads}{gqa} L{self.seqlen} d{self.head_dim} "
                f"{'causal' if self.causal else 'full'} {_SHORT[self.dtype]}")

    def make_inputs(self, device, requires_grad=False):
        """q, k, v in SDPA layout ``(B, H, L, D)``, and a ``dout`` for the backward pass."""
        q = _randn((self.batch, self.heads, self.seqlen, self.head_dim), self.dtype, device, requires_grad)
        k = _randn((self.batch, self.heads_k, self.seqlen, self.head_dim), self.dtype, device, requires_grad)
        v = _randn((self.batch, self.heads_k, self.seqlen, self.head_dim), self.dtype, device, requires_grad)
        dout = _randn((self.batch, self.heads, self.seqlen, self.head_dim), self.dtype, device)
        return {"q": q, "k": k, "v": v, "dout": dout}

    def flops(self) -> float:
        """FLOPs of this case (flash-attn's count, :func:`.measure.attention_flops`)."""
        return measure.attention_flops(self.batch, self.heads, self.seqlen, self.seqlen, self.head_dim,
                                       self.causal, self.direction)

    def nbytes(self) -> float:
        """Bytes of q, k, v and out (what an IO-optimal kernel moves once)."""
        el = DTYPES[self.dtype].itemsize
        return float(el * self.seqlen * self.batch * self.head_dim * (2 * self.heads + 2 * self.heads_k))

    @property
    def x(self) -> int:  # the plot's x axis
        return self.seqlen



@dataclass(frozen=True)
class KVCacheCase(_Case):
    """One decoding step: ``batch`` queries of one token against a full cache of ``cache_len``."""

    batch: int
    heads: int
    heads_k: int
    cache_len: int
    head_dim: int
    dtype: str
    direction: str = "fwd"
    family: str = "kvcache"
    metric: str = "GB/s"

    @property
    def name(self) -> str:
        return (f"decode b{self.batch} h{self.heads}/{self.heads_k}kv cache{self.cache_len} "
                f"d{self.head_dim} {_SHORT[self.dtype]}")

    def make_inputs(self, device, requires_grad=False):
        """q ``(B, 1, H, D)`` and caches ``(B, cache, Hk, D)`` in flash layout, and the same
        caches in SDPA layout ``(B, Hk, cache, D)`` (as torch/Hugging Face caches are kept)."""
        q = _randn((self.batch, 1, self.heads, self.head_dim), self.dtype, device)
        k = _randn((self.batch, self.cache_len, self.heads_k, self.head_dim), self.dtype, device)
        v = _randn((self.batch, self.cache_len, self.heads_k, self.head_dim), self.dtype, device)
        return {"q": q, "k_cache": k, "v_cache": v, "q_sdpa": q.transpose(1, 2).contiguous(),
                "k_sdpa": k.transpose(1, 2).contiguous(), "v_sdpa": v.transpose(1, 2).contiguous()}

    def flops(self) -> float:
        return measure.kvcache_flops(self.batch, self.heads, self.cache_len, self.head_dim)

    def nbytes(self) -> float:
        return measure.kvcache_bytes(self.batch, self.heads, self.heads_k, self.cache_len, self.head_dim,
                                     DTYPES[self.dtype].itemsize)

    @property
    def x(self) -> int:
        return self.cache_len



@dataclass(frozen=True)
class ActivationCase(_Case):
    """A fused gated activation ``act(gate) * up`` over ``(tokens, hidden)``."""

    tokens: int
    hidden: int
    activation: str  # "swiglu" | "geglu"
    dtype: str
    direction: str = "fwd"
    family: str = "activation"
    metric: str = "GB/s"

    @property
    def name(self) -> str:
        return f"{self.activation} {self.direction} {self.tokens}x{self.hidden} {_SHORT[self.dtype]}"

    def make_inputs(self, device, requires_grad=False):
        return {"gate": _randn((self.tokens, self.hidden), self.dtype, device, requires_grad),
                "up": _randn((self.tokens, self.hidden), self.dtype, device, requires_grad),
                "dout": _randn((self.tokens, self.hidden), self.dtype, device)}

    def flops(self) -> float:
        return 0.0

    def nbytes(self) -> float:
        return measure.gated_activation_bytes(self.tokens, self.hidden, DTYPES[self.dtype].itemsize, self.direction)

    @property
    def x(self) -> int:
        return self.tokens * self.hidden



@dataclass(frozen=True)
class FeedForwardCase(_Case):
    """The gated MLP ``down(swiglu(x Wg^T, x Wu^T))`` with ``x`` of ``(tokens, dim)``."""

    tokens: int
    dim: int
    hidden: int
    dtype: str
    activation: str = "swiglu"
    direction: str = "fwd"
    family: str = "feed_forward"
    metric: str = "TFLOP/s"

    @property
    def name(self) -> str:
        return f"ffn {self.direction} {self.tokens}x{self.dim}->{self.hidden} {self.activation} {_SHORT[self.dtype]}"

    def make_inputs(self, device, requires_grad=False):
        s = self.dim ** -0.5  # keep activations O(1) so low precision stays finite
        return {"x": _randn((self.tokens, self.dim), self.dtype, device, requires_grad),
                "w_gate": _randn((self.hidden, self.dim), self.dtype, device, requires_grad, s),
                "w_up": _randn((self.hidden, self.dim), self.dtype, device, requires_grad, s),
                "w_down": _randn((self.dim, self.hidden), self.dtype, device, requires_grad, self.hidden ** -0.5),
                "dout": _randn((self.tokens, self.dim), self.dtype, device)}

    def flops(self) -> float:
        return measure.feed_forward_flops(self.tokens, self.dim, self.hidden, self.direction)

    def nbytes(self) -> float:
        el = DTYPES[self.dtype].itemsize
        return float(el * (2 * self.tokens * self.dim + 3 * self.dim * self.hidden))

    @property
    def x(self) -> int:
        return self.tokens



def _gpu_attention(head_dims, seqlens, directions, dtypes, causals=(False, True), gqa=True):
    cases = []
    for dtype in dtypes:
        for d in head_dims:
            heads = 2048 // d
            for L in seqlens:
                batch = max(1, 16384 // L)
                for causal in causals:
                    for direction in directions:
                        cases.append(AttentionCase(batch, heads, heads, L, d, causal, dtype, direction))
        if gqa:  # Llama-3-8B-like GQA: 32 query heads over 8 key/value heads
            for L in seqlens:
                for direction in directions:
                    cases.append(AttentionCase(max(1, 16384 // L), 32, 8, L, 128, True, dtype, direction))
    return cases


def _cpu_representatives(heads, seqlen, kv, activation, ffn):
    """One case of each kind a CPU user meets, at one size: attention forward full and causal
    (fp32, and causal bf16) with ``heads`` heads of 64 at ``seqlen``, GQA 8:2, forward+backward at
    half the length; decoding 4 x 8 heads over a ``kv = (cache length, head dim)`` cache; SwiGLU
    on ``activation = (tokens, width)``; the gated MLP at ``ffn = (tokens, dim, hidden)``."""
    return [
        AttentionCase(1, heads, heads, seqlen, 64, False, "float32", "fwd"),
        AttentionCase(1, heads, heads, seqlen, 64, True, "float32", "fwd"),
        AttentionCase(1, heads, heads, seqlen, 64, True, "bfloat16", "fwd"),
        AttentionCase(1, 8, 2, seqlen, 64, True, "float32", "fwd"),
        AttentionCase(1, heads, heads, seqlen // 2, 64, True, "float32", "fwd+bwd"),
        KVCacheCase(4, 8, 8, kv[0], kv[1], "float32"),
        ActivationCase(*activation, "swiglu", "float32"),
        FeedForwardCase(*ffn, "float32"),
    ]


def preset(name: str, device_type: str) -> list:
    """The cases of preset ``name`` ("quick", "default", "full"; "tiny" for tests, "small" for
    ``pytest benchmarks/`` on a CPU) on ``device_type``."""
    if name == "tiny":  # for tests: every family and direction, at sizes that take milliseconds
        return [
            AttentionCase(1, 2, 2, 64, 32, False, "float32", "fwd"),
            AttentionCase(1, 2, 2, 64, 32, True, "float32", "fwd+bwd"),
            AttentionCase(1, 4, 2, 32, 32, True, "float32", "bwd"),
            AttentionCase(1, 2, 2, 128, 32, False, "float32", "fwd"),
            KVCacheCase(2, 4, 2, 128, 32, "float32"),
            ActivationCase(64, 128, "swiglu", "float32"),
            FeedForwardCase(32, 64, 128, "float32"),
        ]
    if name == "small" and device_type == "cpu":  # pytest-benchmark's default grid on a CPU: about a minute
        return _cpu_representatives(heads=4, seqlen=512, kv=(1024, 64), activation=(1024, 2048), ffn=(128, 512, 1408))
    if name == "small":
        name = "quick"
    if device_type == "cuda":
        if name == "quick":
            attn = _gpu_attention((128,), (1024, 4096), ("fwd", "fwd+bwd"), ("bfloat16",), gqa=False)
            dec = [KVCacheCase(8, 32, 8, 8192, 128, "bfloat16")]
            ffn = [ActivationCase(8192, 14336, "swiglu", "bfloat16"), FeedForwardCase(4096, 4096, 14336, "bfloat16")]
        elif name == "default":
            attn = _gpu_attention((64, 128), (512, 1024, 2048, 4096, 8192), ("fwd", "bwd"), ("bfloat16",))
            dec = [KVCacheCase(b, 32, 8, c, 128, "bfloat16") for b in (1, 16) for c in (1024, 8192, 32768)]
            ffn = [ActivationCase(t, 14336, a, "bfloat16") for t in (2048, 8192) for a in ("swiglu", "geglu")]
            ffn += [FeedForwardCase(t, 4096, 14336, "bfloat16") for t in (1024, 4096)]
        else:
            attn = _gpu_attention((64, 128, 256), (512, 1024, 2048, 4096, 8192, 16384), ("fwd", "bwd", "fwd+bwd"),
                                  ("bfloat16", "float16"))
            dec = [KVCacheCase(b, 32, 8, c, 128, dt) for dt in ("bfloat16", "float16")
                   for b in (1, 8, 64) for c in (1024, 4096, 16384, 65536)]
            ffn = [ActivationCase(t, 14336, a, dt, dr) for dt in ("bfloat16", "float16") for t in (2048, 8192)
                   for a in ("swiglu", "geglu") for dr in ("fwd", "bwd")]
            ffn += [FeedForwardCase(t, 4096, 14336, dt, "swiglu", dr) for dt in ("bfloat16", "float16")
                    for t in (1024, 4096, 16384) for dr in ("fwd", "fwd+bwd")]
        return attn + dec + ffn
    # CPU
    if name == "quick":
        return _cpu_representatives(heads=8, seqlen=1024, kv=(2048, 128), activation=(2048, 4096),
                                    ffn=(256, 1024, 2816))
    if name == "default":
        attn = [AttentionCase(1, 8, 8, L, d, c, dt, "fwd") for dt in ("float32", "bfloat16")
                for d in (64, 128) for L in (512, 1024, 2048) for c in (False, True)]
        attn += [AttentionCase(1, 8, 2, 2048, 128, True, "float32", "fwd"),
                 AttentionCase(1, 8, 8, 1024, 64, True, "float32", "fwd+bwd")]
        dec = [KVCacheCase(b, 8, 8, c, 128, "float32") for b in (1, 8) for c in (1024, 4096)]
        ffn = [ActivationCase(2048, 4096, a, dt) for a in ("swiglu", "geglu") for dt in ("float32", "bfloat16")]
        ffn += [FeedForwardCase(512, 1024, 2816, dt) for dt in ("float32", "bfloat16")]
        return attn + dec + ffn
    attn = [AttentionCase(1, 8, 8, L, d, c, dt, dr) for dt in ("float32", "bfloat16") for d in (64, 128, 256)
            for L in (512, 1024, 2048, 4096) for c in (False, True) for dr in ("fwd", "bwd", "fwd+bwd")]
    attn += [AttentionCase(1, 32, 8, L, 128, True, dt, "fwd") for dt in ("float32", "bfloat16") for L in (1024, 4096)]
    dec = [KVCacheCase(b, 32, 8, c, 128, dt) for dt in ("float32", "bfloat16") for b in (1, 4, 16)
           for c in (1024, 4096, 16384)]
    ffn = [ActivationCase(t, 11008, a, dt, dr) for dt in ("float32", "bfloat16") for t in (512, 2048)
           for a in ("swiglu", "geglu") for dr in ("fwd", "bwd")]
    ffn += [FeedForwardCase(t, 2048, 5632, dt, "swiglu", dr) for dt in ("float32", "bfloat16") for t in (256, 1024)
            for dr in ("fwd", "fwd+bwd")]
    return attn + dec + ffn


def parse_sizes(text: str, device_type: str) -> list:
    """Cases from ``--sizes``: ``;``-separated ``family:key=value,...`` items, e.g.
    ``attention:seqlen=256,head_dim=64,causal=1,dtype=float32,direction=fwd`` (unset fields
    take small defaults). For quick experiments and tests."""
    defaults = {
        "attention": (AttentionCase, dict(batch=1, heads=4, heads_k=4, seqlen=256, head_dim=64, causal=False,
                                          dtype="float32", direction="fwd")),
        "kvcache": (KVCacheCase, dict(batch=2, heads=4, heads_k=4, cache_len=1024, head_dim=64, dtype="float32")),
        "activation": (ActivationCase, dict(tokens=256, hidden=1024, activation="swiglu", dtype="float32",
                                            direction="fwd")),
        "feed_forward": (FeedForwardCase, dict(tokens=128, dim=256, hidden=512, dtype="float32", direction="fwd")),
    }
    cases = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        family, _, rest = item.partition(":")
        if family not in defaults:
            raise ValueError(f"--sizes: unknown family {family!r}; one of {sorted(defaults)}")
        cls, fields = defaults[family]
        fields = dict(fields)
        for kv in filter(None, rest.split(",")):
            key, _, value = kv.partition("=")
            if key not in fields:
                raise ValueError(f"--sizes: {family} has no field {key!r}; fields: {sorted(fields)}")
            default = fields[key]
            fields[key] = (value not in ("0", "false", "False")) if isinstance(default, bool) else type(default)(value)
        cases.append(cls(**fields))
    return cases


def resolve(name: Optional[str], sizes: Optional[str], device_type: str) -> list:
    """The cases to run: ``--sizes`` if given, else the preset."""
    if sizes:
        return parse_sizes(sizes, device_type)
    return preset(name or "default", device_type)
