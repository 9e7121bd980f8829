"""``python -m fastattn verify``: every backend available here against the float64 reference.

For each backend usable on the device (on a CPU: ``reference``, ``cpu``, ``cuda`` through
the simulated build and ``triton`` through the Triton interpreter, which this command
switches on; on a GPU: ``triton`` and ``cuda``), for each op family the backend implements,
in fp32, fp16 and bf16, on small odd shapes, forward and (where the backend has one)
backward: the public op with ``backend=`` is compared with :mod:`fastattn.reference` run in
float64 on the same inputs, by the project's one tolerance rule (:mod:`fastattn.testing`,
flash-attn's error ratio)::

    max|out - ref64| <= 2 * max|ref_lowp - ref64| + eps(out) / 2 * max|ref64| + 1e-5 * max(1, max|ref64|)

where ``ref_lowp`` is the reference computed in the input dtype (for fp32 inputs this is
fp32, so fp32 is held to ~1e-5 relative) and the middle term half an ulp of the output
dtype at the largest magnitude: the one error no kernel can avoid. Gradients are compared the
same way, with one shared ``dout``. Prints a pass/fail table; the exit status is 1 if any check fails.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from fastattn.testing import DEFAULT_FLOOR, error_and_bound

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Check:
    """One op family on one small input: how to make inputs, call fastattn and the reference."""

    name: str
    family: str  # the core-op prefix: attention, kvcache, softmax, gated_act, bias_gelu, feed_forward
    make: Callable  # (dtype, generator, device) -> dict of tensors
    op: Callable  # (inputs, backend) -> tensor
    ref: Callable  # (inputs, upcast) -> tensor
    grad_keys: tuple = ()
    ref_lowp: Optional[Callable] = None  # (inputs) -> (out, grads) when the lowp reference needs care

    @property
    def fwd_op(self) -> str:
        return f"{self.family}_fwd"

    @property
    def bwd_op(self) -> Optional[str]:
        return None if not self.grad_keys else f"{self.family}_bwd"


def _rand(gen, shape, dtype, device, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def _checks() -> list[Check]:
    import fastattn
    from fastattn import philox
    from fastattn import reference as R
    from fastattn.attention_args import draw_dropout_seed

    def sdpa_inputs(b, h, hk, lq, lk, d):
        return lambda dt, g, dev: {"q": _rand(g, (b, h, lq, d), dt, dev), "k": _rand(g, (b, hk, lk, d), dt, dev),
                                   "v": _rand(g, (b, hk, lk, d), dt, dev), "dout": _rand(g, (b, h, lq, d), dt, dev)}

    def flash_inputs(b, lq, lk, h, hk, d):
        return lambda dt, g, dev: {"q": _rand(g, (b, lq, h, d), dt, dev), "k": _rand(g, (b, lk, hk, d), dt, dev),
                                   "v": _rand(g, (b, lk, hk, d), dt, dev), "dout": _rand(g, (b, lq, h, d), dt, dev)}

    def seeded(dropout_p, fn):
        """``fn(seed, offset)`` under a fixed torch seed: the public op and the reference's
        dropout mask then come from the same draw (without disturbing the caller's RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            return fn(dropout_p)

    def flash_dropout_op(x, backend):
        return seeded(0.2, lambda p: fastattn.flash_attn_func(
            x["q"], x["k"], x["v"], dropout_p=p, causal=True, window_size=(24, -1), softcap=8.0,
            alibi_slopes=x["slopes"], backend=backend))

    def flash_dropout_ref(x, upcast):
        def ref(p):
            seed, offset = draw_dropout_seed(p)
            (b, lq, h, _), lk = x["q"].shape, x["k"].shape[1]
            keep = philox.dropout_keep_mask(seed, offset, p, b, h, lq, lk, device=x["q"].device)
            return R.flash_attn_func(x["q"], x["k"], x["v"], p, causal=True, window_size=(24, -1), softcap=8.0,
                                     alibi_slopes=x["slopes"], dropout_mask=keep, upcast=upcast)
        return seeded(0.2, ref)

    def with_slopes(make, heads):
        def inputs(dt, g, dev):
            x = make(dt, g, dev)
            x["slopes"] = (torch.rand(heads, generator=g) * 0.3).to(dev)  # fp32, as flash-attn takes them
            return x
        return inputs

    def varlen_inputs(dt, g, dev):
        lens_q, lens_k = [1, 37, 20], [9, 37, 45]
        x = {"q": _rand(g, (sum(lens_q), 4, 40), dt, dev), "k": _rand(g, (sum(lens_k), 2, 40), dt, dev),
             "v": _rand(g, (sum(lens_k), 2, 40), dt, dev), "dout": _rand(g, (sum(lens_q), 4, 40), dt, dev),
             "slopes": (torch.rand(3, 4, generator=g) * 0.3).to(dev)}
        for name, lens in (("cu_q", lens_q), ("cu_k", lens_k)):
            x[name] = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=dev)
        return x

    def varlen_call(fn, x, **kw):
        return fn(x["q"], x["k"], x["v"], x["cu_q"], x["cu_k"], 37, 45, causal=True, alibi_slopes=x["slopes"], **kw)

    def kv_inputs(dt, g, dev):
        return {"q": _rand(g, (2, 1, 4, 64), dt, dev), "k_cache": _rand(g, (2, 96, 2, 64), dt, dev),
                "v_cache": _rand(g, (2, 96, 2, 64), dt, dev), "k": _rand(g, (2, 1, 2, 64), dt, dev),
                "v": _rand(g, (2, 1, 2, 64), dt, dev), "lens": torch.tensor([40, 77], dtype=torch.int32, device=dev)}

    def kv_op(x, backend):
        kc, vc = x["k_cache"].clone(), x["v_cache"].clone()  # appended to in place
        return fastattn.flash_attn_with_kvcache(x["q"], kc, vc, x["k"], x["v"], cache_seqlens=x["lens"],
                                                causal=True, backend=backend)

    def kv_ref(x, upcast):
        kc, vc = x["k_cache"].clone(), x["v_cache"].clone()
        return R.flash_attn_with_kvcache(x["q"], kc, vc, x["k"], x["v"], cache_seqlens=x["lens"], causal=True,
                                         upcast=upcast)

    def softmax_inputs(dt, g, dev):
        mask = (torch.rand(17, 33, generator=g) < 0.2).to(dev)
        return {"scores": _rand(g, (2, 3, 17, 33), dt, dev, 3.0), "mask": mask, "dout": _rand(g, (2, 3, 17, 33), dt, dev)}

    def softmax_lowp(mask, scale, causal):
        # Megatron's fused softmax saves its output in the input dtype and differentiates from
        # it: the low-precision reference does the same (dx = y * (dy - sum(dy * y)) * scale,
        # in the input dtype), where autograd through the fp32 reference would be more exact
        # than any such kernel can be.
        def fn(x):
            y = R.scaled_masked_softmax(x["scores"], x[mask] if mask else None, scale, causal=causal)
            dy = x["dout"]
            return y, [y * (dy - (dy * y).sum(dim=-1, keepdim=True)) * scale]
        return fn

    def act_inputs(dt, g, dev):
        return {"gate": _rand(g, (37, 96), dt, dev, 2.0), "up": _rand(g, (37, 96), dt, dev),
                "dout": _rand(g, (37, 96), dt, dev)}

    def bias_gelu_inputs(dt, g, dev):
        return {"x": _rand(g, (5, 7, 64), dt, dev, 2.0), "bias": _rand(g, (64,), dt, dev),
                "dout": _rand(g, (5, 7, 64), dt, dev)}

    def ffn_inputs(dt, g, dev):
        return {"x": _rand(g, (13, 48), dt, dev), "w_gate": _rand(g, (80, 48), dt, dev, 48 ** -0.5),
                "w_up": _rand(g, (80, 48), dt, dev, 48 ** -0.5), "w_down": _rand(g, (48, 80), dt, dev, 80 ** -0.5),
                "dout": _rand(g, (13, 48), dt, dev)}

    return [
        Check("sdpa gqa causal 2x4/2x67x40", "attention", sdpa_inputs(2, 4, 2, 67, 67, 40),
              lambda x, b: fastattn.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=True,
                                                                 enable_gqa=True, backend=b),
              lambda x, up: R.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=True,
                                                           enable_gqa=True, upcast=up), ("q", "k", "v")),
        Check("sdpa Lq33 Lk80 d64", "attention", sdpa_inputs(1, 2, 2, 33, 80, 64),
              lambda x, b: fastattn.scaled_dot_product_attention(x["q"], x["k"], x["v"], backend=b),
              lambda x, up: R.scaled_dot_product_attention(x["q"], x["k"], x["v"], upcast=up), ("q", "k", "v")),
        Check("flash causal Lq31 Lk49 d59", "attention", flash_inputs(2, 31, 49, 4, 2, 59),
              lambda x, b: fastattn.flash_attn_func(x["q"], x["k"], x["v"], causal=True, backend=b),
              lambda x, up: R.flash_attn_func(x["q"], x["k"], x["v"], causal=True, upcast=up), ("q", "k", "v")),
        Check("flash dropout window softcap alibi gqa", "attention", with_slopes(flash_inputs(2, 45, 60, 4, 2, 32), 4),
              flash_dropout_op, flash_dropout_ref, ("q", "k", "v")),
        Check("varlen causal alibi gqa", "attention", varlen_inputs,
              lambda x, b: varlen_call(fastattn.flash_attn_varlen_func, x, backend=b),
              lambda x, up: varlen_call(R.flash_attn_varlen_func, x, upcast=up), ("q", "k", "v")),
        Check("kvcache append causal", "kvcache", kv_inputs, kv_op, kv_ref),
        Check("softmax mask 2x3x17x33", "softmax", softmax_inputs,
              lambda x, b: fastattn.scaled_masked_softmax(x["scores"], x["mask"], 0.7, backend=b),
              lambda x, up: R.scaled_masked_softmax(x["scores"], x["mask"], 0.7, upcast=up), ("scores",),
              softmax_lowp("mask", 0.7, False)),
        Check("softmax causal 2x3x17x33", "softmax", softmax_inputs,
              lambda x, b: fastattn.scaled_masked_softmax(x["scores"], None, 1.3, causal=True, backend=b),
              lambda x, up: R.scaled_masked_softmax(x["scores"], None, 1.3, causal=True, upcast=up), ("scores",),
              softmax_lowp(None, 1.3, True)),
        Check("swiglu 37x96", "gated_act", act_inputs, lambda x, b: fastattn.swiglu(x["gate"], x["up"], backend=b),
              lambda x, up: R.swiglu(x["gate"], x["up"], upcast=up), ("gate", "up")),
        Check("geglu 37x96", "gated_act", act_inputs, lambda x, b: fastattn.geglu(x["gate"], x["up"], backend=b),
              lambda x, up: R.geglu(x["gate"], x["up"], upcast=up), ("gate", "up")),
        Check("bias_gelu tanh 5x7x64", "bias_gelu", bias_gelu_inputs,
              lambda x, b: fastattn.bias_gelu(x["x"], x["bias"], "tanh", backend=b),
              lambda x, up: R.bias_gelu(x["x"], x["bias"], "tanh", upcast=up), ("x", "bias")),
        Check("feed_forward swiglu 13x48x80", "feed_forward", ffn_inputs,
              lambda x, b: fastattn.feed_forward(x["x"], (x["w_gate"], x["w_up"]), x["w_down"], backend=b),
              lambda x, up: R.feed_forward(x["x"], (x["w_gate"], x["w_up"]), x["w_down"], upcast=up),
              ("x", "w_gate", "w_up", "w_down")),
    ]


def _forward_and_grads(fn, inputs, grad_keys, cast=None):
    """``fn(inputs)`` and, if ``grad_keys``, the gradients of ``<out, dout>`` w.r.t. those inputs.
    ``cast`` converts the floating-point inputs first (float64 for the oracle)."""
    x = {}
    for key, t in inputs.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.detach().to(cast) if cast is not None else t.detach().clone()
            x[key] = t.requires_grad_(key in grad_keys)
        else:
            x[key] = t
    if not grad_keys:
        with torch.no_grad():
            return fn(x), []
    out = fn(x)
    grads = torch.autograd.grad(out, [x[k] for k in grad_keys], x["dout"].to(out.dtype))
    return out, list(grads)


def run_check(check: Check, backend: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Run one check; returns a row with the status ("pass", "FAIL", "skip") and errors."""
    from fastattn import dispatch

    row = {"backend": backend, "check": check.name, "family": check.family, "dtype": str(dtype).replace("torch.", ""),
           "status": "pass", "fwd_err": None, "fwd_tol": None, "bwd_err": None, "bwd_tol": None, "reason": None}
    impls = dispatch.implementations
    grad_keys = check.grad_keys if check.bwd_op and backend in impls(check.bwd_op) else ()
    # Name the backend whose kernel runs each direction: an op this backend delegates (e.g. the
    # cuda backend's attention backward) is shown as "bwd by <backend>", never as its own.
    row["fwd_backend"] = dispatch.runs_on(check.fwd_op, backend, device)
    row["bwd_backend"] = dispatch.runs_on(check.bwd_op, backend, device) if grad_keys else None
    row["directions"] = "+".join(
        d if by == backend else f"{d} by {by}"
        for d, by in (("fwd", row["fwd_backend"]), ("bwd", row["bwd_backend"])) if by is not None)
    gen = torch.Generator().manual_seed(seed)
    inputs = check.make(dtype, gen, device)
    try:
        out, grads = _forward_and_grads(lambda x: check.op(x, backend), inputs, grad_keys)
    except ValueError as exc:
        if "cannot run" in str(exc):  # the backend declines this input (dispatch's explicit-backend error)
            row.update(status="skip", reason=str(exc).splitlines()[0][:200])
            return row
        row.update(status="FAIL", reason=f"ValueError: {exc}"[:200])
        return row
    except Exception as exc:  # noqa: BLE001  (a crash of a kernel is a failure, reported, not raised)
        row.update(status="FAIL", reason=_describe(exc))
        return row
    ref64, grads64 = _forward_and_grads(lambda x: check.ref(x, True), inputs, grad_keys, cast=torch.float64)
    if check.ref_lowp is not None:
        with torch.no_grad():
            ref_lp, grads_lp = check.ref_lowp(inputs)
    else:
        ref_lp, grads_lp = _forward_and_grads(lambda x: check.ref(x, False), inputs, grad_keys)
    row["fwd_err"], row["fwd_tol"] = error_and_bound(out, ref64, ref_lp)
    ok = row["fwd_err"] <= row["fwd_tol"]
    if grad_keys:
        pairs = [error_and_bound(g, g64, glp) for g, g64, glp in zip(grads, grads64, grads_lp)]
        worst = max(pairs, key=lambda p: p[0] - p[1])  # the gradient closest to (or furthest over) its bound
        row["bwd_err"], row["bwd_tol"] = worst
        ok = ok and all(e <= t for e, t in pairs)
    row["status"] = "pass" if ok else "FAIL"
    return row


def _describe(exc: BaseException) -> str:
    """The exception and where it was raised (file:line of the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return (f"{type(exc).__name__}: {exc}".splitlines()[0][:200] + where)


def _enable_interpreter(device: torch.device) -> Optional[str]:
    """On a machine without CUDA, switch the Triton interpreter on (it must precede importing
    triton); returns a note when that is no longer possible in this process."""
    if device.type != "cpu" or os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        return None
    if "triton" in sys.modules:
        return ("triton was imported before verify could set TRITON_INTERPRET=1: "
                "run `TRITON_INTERPRET=1 python -m fastattn verify`")
    os.environ["TRITON_INTERPRET"] = "1"
    return None


def sweep(device: torch.device, backends=None, dtypes=None, families=None) -> tuple[list, dict]:
    """Every (backend, check, dtype) row, and the backends not available with why."""
    from fastattn import dispatch

    available = dispatch.available_backends(device)
    chosen = [b for b in dispatch.BACKENDS if backends is None or b in backends]
    unavailable = {b: available[b] for b in chosen if available[b] is not None}
    rows = []
    for backend in chosen:
        if backend in unavailable:
            continue
        for check in _checks():
            if families and check.family not in families and check.name.split()[0] not in families:
                continue
            if backend not in dispatch.implementations(check.fwd_op):
                continue
            for dt in dtypes or DTYPES:
                rows.append(run_check(check, backend, DTYPES[dt], device))
    return rows, unavailable


def _fmt(err, tol):
    if err is None:
        return "-"
    return f"{err:.2e} <= {tol:.2e}" if err <= tol else f"{err:.2e} > {tol:.2e}"


def format_rows(rows, unavailable, device) -> str:
    """The pass/fail table, the backends not available here, and the totals."""
    from fastattn.text_table import render_table

    header = ("backend", "check", "dtype", "dirs", "fwd max err vs bound", "bwd max err vs bound", "result")
    body = [(r["backend"], r["check"], r["dtype"], r["directions"], _fmt(r["fwd_err"], r["fwd_tol"]),
             _fmt(r["bwd_err"], r["bwd_tol"]), r["status"] + (f": {r['reason']}" if r["reason"] else ""))
            for r in rows]
    lines = [f"fastattn verify on {device.type}: bound = 2 * max|ref_lowp - ref64| + eps(out) / 2 * max|ref64| "
             f"+ {DEFAULT_FLOOR:g} * max(1, max|ref64|)",
             render_table(header, body) if body else "(no checks ran)"]
    for b, why in unavailable.items():
        lines.append(f"{b}: not available here: {why}")
    fails = sum(r["status"] == "FAIL" for r in rows)
    skips = sum(r["status"] == "skip" for r in rows)
    lines.append(f"{len(rows) - fails - skips} passed, {fails} failed, {skips} skipped (backend declined the input)")
    return "\n".join(lines)


def run(args) -> int:
    """Entry point of the ``verify`` subcommand."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    note = _enable_interpreter(device)
    from fastattn import dispatch

    split = lambda s: [x for x in s.split(",") if x] if s else None
    backends, dtypes, families = split(args.backends), split(args.dtypes), split(args.families)
    known_families = {c.family for c in _checks()} | {c.name.split()[0] for c in _checks()}
    for option, given, known in (("--backends", backends, dispatch.BACKENDS), ("--dtypes", dtypes, DTYPES),
                                 ("--families", families, known_families)):
        unknown = sorted(set(given or ()) - set(known))
        if unknown:
            print(f"verify: unknown {option} {', '.join(unknown)}; choose from {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
    rows, unavailable = sweep(device, backends, dtypes, families)
    print(format_rows(rows, unavailable, device))
    if note:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device.type, "rows": rows, "unavailable": unavailable},
                                              indent=2) + "\n")
    failed = any(r["status"] == "FAIL" for r in rows)
    return 1 if failed or not rows else 0


def add_parser(sub) -> None:
    """Register the ``verify`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("verify", help="check every backend available here against the float64 reference",
                       description="Compare every backend available on this machine with the float64 "
                                   "reference, forward and backward, in fp32/fp16/bf16 on small shapes; exit "
                                   "status 1 if any check fails.")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when visible, else cpu")
    p.add_argument("--backends", help="comma-separated subset of reference,triton,cuda,cpu")
    p.add_argument("--dtypes", help="comma-separated subset of float32,float16,bfloat16")
    p.add_argument("--families", help="comma-separated op families: attention,kvcache,softmax,gated_act,"
                                      "bias_gelu,feed_forward (or a check's first word: sdpa, flash, swiglu, ...)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=run)
