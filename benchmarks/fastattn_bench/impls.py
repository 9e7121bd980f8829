"""Who is timed in ``python -m fastattn bench``: fastattn backends and peers.

A :class:`Runner` computes one case family's forward from the case's inputs; the bench
loop derives the backward and forward+backward from it with ``torch.autograd.grad``,
so every implementation is timed on exactly the same work. Peers are found by
importing them in this process: torch SDPA under each of its backends (flash,
efficient, cuDNN, math), flash-attn, xformers, FlexAttention (compiled), Liger-Kernel,
and plain torch for the feed-forward ops. A peer that cannot run a case is reported
as skipped with the reason, never silently dropped.

fastattn is timed per backend available on the device, plus ``auto`` (what a user
gets); the Triton interpreter and the simulated CUDA build are correctness tools and
are never timed.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Optional

import torch
import torch.nn.functional as F

GRAD_KEYS = {
    "attention": ("q", "k", "v"),
    "activation": ("gate", "up"),
    "feed_forward": ("x", "w_gate", "w_up", "w_down"),
    "kvcache": (),
}


FAMILY_OPS = {
    "attention": ("attention_fwd", "attention_bwd"),
    "kvcache": ("kvcache_fwd",),
    "activation": ("gated_act_fwd", "gated_act_bwd"),
    "feed_forward": ("feed_forward_fwd", "feed_forward_bwd"),
}
"""The core ops (:data:`fastattn.dispatch.OP_SIGNATURES`) behind each case family."""


class Runner:
    """One implementation of some case families. Subclasses set ``name``, ``kind``
    ("fastattn" or "peer"), ``families`` and ``forward``."""

    name = "?"
    kind = "peer"
    families: tuple = ()

    def why_not(self, case, device: torch.device) -> Optional[str]:
        """``None`` if this runner can time ``case`` on ``device``, else why not (cheap checks)."""
        return None

    def context(self):
        """Entered around preparation and timing (e.g. an SDPA backend selection)."""
        return contextlib.nullcontext()

    def adapt(self, case, inputs: dict) -> dict:
        """Untimed conversion of the case's inputs to this runner's layout."""
        return inputs

    def forward(self, case, inputs: dict) -> torch.Tensor:
        """The case's forward output from its (adapted) inputs; differentiable for backward cases."""
        raise NotImplementedError

    def resolved(self, case, inputs: dict) -> Optional[str]:
        """For ``fastattn:auto``: the backend auto picks for these inputs."""
        return None


def _flash_layout(inputs: dict, keys) -> dict:
    """``(B, H, L, D)`` -> contiguous ``(B, L, H, D)`` leaf tensors (gradients kept on)."""
    out = dict(inputs)
    for key in keys:
        t = inputs[key]
        out[key] = t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad)
    return out


# --------------------------------------------------------------------------- fastattn


class FastattnRunner(Runner):
    """fastattn's public ops with ``backend=<name>`` (``"auto"``: what a user gets)."""

    kind = "fastattn"
    families = ("attention", "kvcache", "activation", "feed_forward")

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"fastattn:{backend}"
        self.last_selected: Optional[str] = None

    def why_not(self, case, device):
        from fastattn import dispatch

        ops = FAMILY_OPS[case.family]
        if case.direction == "fwd":
            ops = ops[:1]
        for op in ops:
            if self.backend != "auto" and self.backend not in dispatch.implementations(op):
                return f"fastattn's {self.backend} backend has no {op} kernel yet"
        return None

    def forward(self, case, inp):
        import fastattn

        b = self.backend
        if case.family == "attention":
            return fastattn.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"], is_causal=case.causal,
                                                         enable_gqa=case.heads != case.heads_k, backend=b)
        if case.family == "kvcache":
            return fastattn.flash_attn_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"], backend=b)
        if case.family == "activation":
            fn = fastattn.swiglu if case.activation == "swiglu" else fastattn.geglu
            return fn(inp["gate"], inp["up"], backend=b)
        return fastattn.feed_forward(inp["x"], (inp["w_gate"], inp["w_up"]), inp["w_down"],
                                     activation=case.activation, backend=b)

    def resolved(self, case, inp):
        return self.last_selected


@contextlib.contextmanager
def record_selection(runner):
    """Record in ``runner.last_selected`` the backend(s) whose kernels run inside the block:
    what :func:`fastattn.dispatch.select` picks (what ``auto`` resolved to), and for an op the
    picked backend delegates for these inputs, the backend that really runs it (``"cuda+triton
    (attention_bwd delegated by cuda)"`` at head dim 256); joined by "+" if several."""
    from fastattn import dispatch

    original = dispatch.select
    picked: list = []

    def spy(ops, requested, device, *args, **kwargs):
        name = original(ops, requested, device, *args, **kwargs)
        for op in (ops,) if isinstance(ops, str) else ops:
            by = dispatch.runs_on(op, name, device, *args, **kwargs)
            label = name if by == name else f"{by} ({op} delegated by {name})"
            if label not in picked:
                picked.append(label)
        return name

    dispatch.select = spy
    try:
        yield
    finally:
        dispatch.select = original
        if hasattr(runner, "last_selected"):
            runner.last_selected = "+".join(picked) or None


def fastattn_backends(device: torch.device) -> list[str]:
    """fastattn backends to time on ``device``: the native ones available there, then ``auto``.
    Never the Triton interpreter or the simulated CUDA build (CPU tensors with "triton"/"cuda")."""
    from fastattn import dispatch

    if device.type == "cuda":
        candidates = ("cuda", "triton")
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            candidates = ("cuda",)
    else:
        candidates = ("cpu",)
    avail = dispatch.available_backends(device)
    return [b for b in candidates if avail.get(b) is None] + ["auto"]


# --------------------------------------------------------------------------- torch SDPA


class SDPARunner(Runner):
    """``torch.nn.functional.scaled_dot_product_attention`` restricted to one SDPA backend."""

    families = ("attention", "kvcache")

    def __init__(self, which: str):
        self.which = which
        self.name = f"sdpa_{which}"

    def why_not(self, case, device):
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401
        except ImportError:
            return "torch.nn.attention.sdpa_kernel needs torch >= 2.3"
        if device.type == "cpu" and self.which in ("efficient", "cudnn"):
            return f"torch has no {self.which} SDPA kernel for CPU tensors"
        return None

    def context(self):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([{"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[self.which]])

    def forward(self, case, inp):
        if case.family == "kvcache":
            gqa = case.heads != case.heads_k
            return F.scaled_dot_product_attention(inp["q_sdpa"], inp["k_sdpa"], inp["v_sdpa"], enable_gqa=gqa)
        gqa = case.heads != case.heads_k
        return F.scaled_dot_product_attention(inp["q"], inp["k"], inp["v"], is_causal=case.causal, enable_gqa=gqa)


# --------------------------------------------------------------------------- other peers


def _import(name: str):
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001  (any import failure means "not a peer here")
        return None, f"{name} is not importable ({type(exc).__name__})"


class FlashAttnRunner(Runner):
    """flash-attn 2's ``flash_attn_func`` / ``flash_attn_with_kvcache`` (CUDA, fp16/bf16)."""

    name = "flash_attn"
    families = ("attention", "kvcache")

    def why_not(self, case, device):
        mod, why = _import("flash_attn")
        if mod is None:
            return why
        if device.type != "cuda":
            return "flash-attn runs on CUDA tensors only"
        if case.dtype == "float32":
            return "flash-attn takes fp16/bf16 only"
        return None

    def adapt(self, case, inp):
        return _flash_layout(inp, ("q", "k", "v", "dout")) if case.family == "attention" else inp

    def forward(self, case, inp):
        import flash_attn

        if case.family == "kvcache":
            return flash_attn.flash_attn_with_kvcache(inp["q"], inp["k_cache"], inp["v_cache"])
        return flash_attn.flash_attn_func(inp["q"], inp["k"], inp["v"], causal=case.causal)


class XformersRunner(Runner):
    """xformers' ``memory_efficient_attention`` (GQA through its 5-D ``BMGHK`` form, no copy)."""

    name = "xformers"
    families = ("attention",)

    def why_not(self, case, device):
        mod, why = _import("xformers.ops")
        if mod is None:
            return why
        if device.type != "cuda":
            return "xformers' kernels run on CUDA tensors only"
        return None

    def adapt(self, case, inp):
        return _flash_layout(inp, ("q", "k", "v", "dout"))

    def forward(self, case, inp):
        import xformers.ops as xops

        bias = xops.LowerTriangularMask() if case.causal else None
        q, k, v = inp["q"], inp["k"], inp["v"]
        if case.heads != case.heads_k:
            b, L, hk, d = k.shape
            g = case.heads // hk
            q = q.view(b, L, hk, g, d)
            k = k.unsqueeze(3).expand(b, L, hk, g, d)
            v = v.unsqueeze(3).expand(b, L, hk, g, d)
            return xops.memory_efficient_attention(q, k, v, attn_bias=bias).reshape(b, L, case.heads, d)
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias)


class FlexRunner(Runner):
    """``torch.nn.attention.flex_attention`` under ``torch.compile`` (compiled in the warm-up)."""

    name = "flex_attention"
    families = ("attention",)

    def __init__(self, allow_cpu: bool):
        self.allow_cpu = allow_cpu
        self._compiled = None
        self._masks: dict = {}

    def why_not(self, case, device):
        mod, why = _import("torch.nn.attention.flex_attention")
        if mod is None:
            return why
        if device.type == "cpu" and not self.allow_cpu:
            return "FlexAttention on CPU is timed only with --full (its torch.compile takes minutes)"
        return None

    def forward(self, case, inp):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if self._compiled is None:
            self._compiled = torch.compile(flex_attention, dynamic=False)
        mask = None
        if case.causal:
            key = (case.seqlen, str(inp["q"].device))
            if key not in self._masks:
                self._masks[key] = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None,
                                                     case.seqlen, case.seqlen, device=str(inp["q"].device))
            mask = self._masks[key]
        return self._compiled(inp["q"], inp["k"], inp["v"], block_mask=mask, enable_gqa=case.heads != case.heads_k)


class TorchFFNRunner(Runner):
    """Plain torch ops: ``silu(gate) * up`` / ``gelu(gate) * up``, and the three-linear MLP."""

    name = "torch"
    families = ("activation", "feed_forward")

    def forward(self, case, inp):
        act = F.silu if case.activation == "swiglu" else F.gelu
        if case.family == "activation":
            return act(inp["gate"]) * inp["up"]
        x = inp["x"]
        return F.linear(act(F.linear(x, inp["w_gate"])) * F.linear(x, inp["w_up"]), inp["w_down"])


class LigerRunner(Runner):
    """Liger-Kernel's fused ``LigerSiLUMulFunction`` / ``LigerGELUMulFunction`` (CUDA)."""

    name = "liger"
    families = ("activation",)

    def why_not(self, case, device):
        mod, why = _import("liger_kernel.ops.swiglu")
        if mod is None:
            return why
        if device.type != "cuda":
            return "Liger-Kernel runs on CUDA tensors only"
        if case.activation == "geglu":
            return "Liger's GEGLU uses the tanh GELU, fastattn's geglu the exact erf: not the same op"
        return None

    def forward(self, case, inp):
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        return LigerSiLUMulFunction.apply(inp["gate"], inp["up"])


def runners(device: torch.device, full: bool) -> list[Runner]:
    """Every implementation to try on ``device``: fastattn backends first, then the peers."""
    out: list[Runner] = [FastattnRunner(b) for b in fastattn_backends(device)]
    out += [SDPARunner(w) for w in ("flash", "efficient", "cudnn", "math")]
    out += [FlashAttnRunner(), XformersRunner(), FlexRunner(allow_cpu=full), TorchFFNRunner(), LigerRunner()]
    return out
