"""The "Static analysis (no GPU)" tables of benchmarks/RESULTS.md.

Compiles every kernel config the autotuners keep (cached; see ``python -m fastattn info
--kernels --sass``), analyses the main loops of their machine code, and prints one Markdown
table per kernel family at head dims 64 and 128, 16-bit, for sm_80 and sm_90a: Triton
attention forward, dK/dV, dQ (and their Hopper TMA kernels, sm_90a), split-KV decode, FFN
gate/up GEMM, and the CUDA C++ attention forward. Every figure is a static ceiling (an upper bound from instruction counts), not a
measured speed.

With ``--tutorial PATH`` (``python/tutorials/06-fused-attention.py`` of a Triton checkout) it
also compiles the Triton tutorial's fused-attention forward and backward the same way, at its own
tiles, for the side-by-side table; ``--attention-only`` compiles and prints the Triton attention
tables alone (seconds to minutes instead of the whole package).

Usage: python benchmarks/static_analysis.py [--attention-only] [--tutorial PATH] > tables.md
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
from pathlib import Path

from fastattn.buildcheck import kernel_report, sass_report

HEAD_DIMS = (64, 128)
_VARIANTS = {"plain-deterministic": "non-causal", "causal": "causal"}


def _tile(c: dict) -> str:
    return f"{c['BLOCK_M']}x{c['BLOCK_N']} w{c['num_warps']} s{c['num_stages']}"


def _attention(kernel):
    def pick(r):
        c = r["config"]
        return (r["backend"] == "triton" and r["kernel"] == kernel and c.get("dtype") == "fp16"
                and c.get("BLOCK_D") in HEAD_DIMS and c.get("variant") in _VARIANTS)

    def text(c):
        return f"{_VARIANTS[c['variant']]} hd{c['BLOCK_D']} {_tile(c)}"

    def order(r):
        c = r["config"]
        return (c["BLOCK_D"], list(_VARIANTS).index(c["variant"]), -c["BLOCK_M"], -c["BLOCK_N"], c["num_warps"], r["arch"])

    return pick, text, order


def _decode():
    def pick(r):
        c = r["config"]
        return (r["backend"] == "triton" and r["kernel"] in ("decode_split", "decode_direct")
                and c.get("dtype") == "fp16" and c.get("BLOCK_D") in HEAD_DIMS and c.get("BLOCK_DV") == c.get("BLOCK_D")
                and not (c.get("WINDOW") or c.get("SOFTCAP") or c.get("ALIBI")))

    def text(c):
        return f"hd{c['BLOCK_D']} {_tile(c)}"

    def order(r):
        c = r["config"]
        return (c["BLOCK_D"], r["kernel"], c["BLOCK_M"], c["BLOCK_N"], r["arch"])

    return pick, text, order


def _ffn():
    first_activation = {}

    def pick(r):
        c = r["config"]
        if r["backend"] != "triton" or not r["kernel"].startswith("feed_forward_gate_up") or c.get("dtype") != "bf16":
            return False
        # One activation stands for all: they differ only in the epilogue after the loop.
        return first_activation.setdefault(r["kernel"], c.get("activation")) == c.get("activation")

    def text(c):
        return f"{c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}"

    def order(r):
        c = r["config"]
        return (r["kernel"], -c["BLOCK_M"], -c["BLOCK_N"], -c["BLOCK_K"], r["arch"])

    return pick, text, order


def _cuda_attention():
    def pick(r):
        cfg = str(r["config"]).replace(" ", "").split(",")
        return (r["backend"] == "cuda" and r["kernel"] == "flash_fwd_kernel" and cfg[0] == "__half"
                and int(cfg[1]) in HEAD_DIMS)

    def text(c):
        _, d, causal = str(c).replace(" ", "").split(",")
        return f"{'causal' if causal == 'true' else 'non-causal'} hd{d}"

    def order(r):
        _, d, causal = str(r["config"]).replace(" ", "").split(",")
        return (int(d), causal, r["arch"])

    return pick, text, order


FAMILIES = (
    ("Triton attention forward (`attention_fwd`), fp16", _attention("attention_fwd")),
    ("Triton attention backward dK/dV (`attention_bwd_dkdv`), fp16", _attention("attention_bwd_dkdv")),
    ("Triton attention backward dQ (`attention_bwd_dq`), fp16", _attention("attention_bwd_dq")),
    ("Triton attention forward on Hopper (`attention_fwd_tma`), fp16, sm_90a only", _attention("attention_fwd_tma")),
    ("Triton attention backward dK/dV on Hopper (`attention_bwd_dkdv_tma`: loops edge-before, interior, "
     "edge-after), fp16, sm_90a only", _attention("attention_bwd_dkdv_tma")),
    ("Triton attention backward dQ on Hopper (`attention_bwd_dq_tma`: loops edge-before, interior, edge-after), "
     "fp16, sm_90a only", _attention("attention_bwd_dq_tma")),
    ("Triton split-KV decode (`decode_split`, `decode_direct`), fp16, no window/softcap/ALiBi", _decode()),
    ("Triton FFN gate/up GEMM (`feed_forward_gate_up_fwd`/`_bwd`), 16-bit (bf16 build; fp16 differs only in "
     "conversions), one activation", _ffn()),
    ("CUDA C++ attention forward (`flash_fwd_kernel`), fp16", _cuda_attention()),
)

ATTENTION_KERNELS = ("attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq", "attention_fwd_tma",
                     "attention_bwd_dkdv_tma", "attention_bwd_dq_tma")
ATTENTION_FAMILIES = FAMILIES[:6]  # the Triton attention tables (--attention-only)

HEADER = ("kernel", "config", "arch", "main loop", "MMA/warp", "redund.", "non-MMA/4kF", "smem B/F", "MUFU", "SEL",
          "local B", "issue", "smem", "mufu", "fp32", "static ceiling")


def tables(records: list, families=FAMILIES) -> str:
    """The Markdown tables of ``families`` (default :data:`FAMILIES`) from analysed kernel records."""
    out = []
    for title, (pick, text, order) in families:
        chosen = sorted((r for r in records if pick(r)), key=order)
        body = [row[1:] for row in sass_report.rows(chosen, config_text=text)]  # drop the backend column
        out.append(f"#### {title}\n")
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "|".join("---" for _ in HEADER) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in body)
        if not body:
            out.append("| " + " | ".join(["(none)"] + [""] * (len(HEADER) - 1)) + " |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- the Triton tutorial, for comparison

_TUTORIAL_FUNCTIONS = ("_attn_fwd_inner_tma", "_attn_fwd_tma", "_attn_bwd_dkdv", "_attn_bwd_dq", "_attn_bwd")
# The tutorial's own tiles: its forward autotunes over 64/128 x 32/64 tiles on 4 warps (8 only for
# 128 x 128, which it does not list), 3/4/7 stages; its backward launches one fixed tile.
TUTORIAL_FWD_TILES = ((128, 64, 4, 3), (64, 64, 4, 3))
TUTORIAL_BWD = dict(BLOCK_M1=32, BLOCK_N1=128, BLOCK_M2=128, BLOCK_N2=32, BLK_SLICE_FACTOR=2)
TUTORIAL_BWD_LAUNCH = (4, 5)  # num_warps, num_stages
_INTS = {"Z": "i32", "H": "i32", "N_CTX": "i32"}  # upper-case names that are not pointers


def _tutorial_module(path: str):
    """The tutorial's attention kernels, taken from its source (its module needs a GPU to import)
    into a module of their own, under the cache directory, with the autotuning decorators dropped."""
    tree = ast.parse(Path(path).read_text())
    parts = ["import triton", "import triton.language as tl", ""]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in _TUTORIAL_FUNCTIONS:
            node.decorator_list = [d for d in node.decorator_list if ast.unparse(d) == "triton.jit"]
            parts.append(ast.unparse(node) + "\n")
    root = Path(os.environ.get("FASTATTN_CACHE_DIR") or Path.home() / ".cache" / "fastattn") / "tutorial"
    root.mkdir(parents=True, exist_ok=True)
    out = root / "triton_tutorial_attention.py"
    out.write_text("\n".join(parts))
    spec = importlib.util.spec_from_file_location("triton_tutorial_attention", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tutorial_cases(path: str) -> list:
    """AOT cases of the tutorial's forward (causal and not, at :data:`TUTORIAL_FWD_TILES`) and
    backward (its fixed launch) at head dims 64 and 128, fp16, sequence length 8192."""
    from fastattn.kernels._configs import AotCase, signature_for

    mod = _tutorial_module(path)
    cases = []
    for bd in HEAD_DIMS:
        for causal in (False, True):
            for bm, bn, warps, stages in TUTORIAL_FWD_TILES:
                # The tutorial's tensor-descriptor forward (Triton 3.9 has no block pointers, which its
                # other forward uses); on sm_80 Triton lowers the descriptors to ordinary loads.
                fn = mod._attn_fwd_tma
                const = dict(HEAD_DIM=bd, BLOCK_M=bm, BLOCK_N=bn, FP8_OUTPUT=False, STAGE=3 if causal else 1,
                             N_CTX=8192)
                descs = {"desc_q": f"tensordesc<fp16[{bm},{bd}]>", "desc_o": f"tensordesc<fp16[{bm},{bd}]>",
                         "desc_k": f"tensordesc<fp16[{bn},{bd}]>", "desc_v": f"tensordesc<fp16[{bn},{bd}]>"}
                sig = signature_for(fn, dict(_INTS, M="*fp32"), "*fp16", floats=("sm_scale",), constexprs=const)
                sig.update(descs)
                cases.append(AotCase(
                    kernel="tutorial_attn_fwd", fn=fn, constexprs=const, signature=sig,
                    num_warps=warps, num_stages=stages,
                    config=dict(variant="causal" if causal else "plain-deterministic", dtype="fp16", BLOCK_D=bd,
                                BLOCK_M=bm, BLOCK_N=bn),
                    divisible_by_16=("M",)))
        fn = mod._attn_bwd
        const = dict(TUTORIAL_BWD, HEAD_DIM=bd, stride_d=1)
        warps, stages = TUTORIAL_BWD_LAUNCH
        cases.append(AotCase(
            kernel="tutorial_attn_bwd", fn=fn, constexprs=const,
            signature=signature_for(fn, dict(_INTS, M="*fp32", D="*fp32"), "*fp16", floats=("sm_scale",),
                                    constexprs=const),
            num_warps=warps, num_stages=stages,
            config=dict(variant="causal", dtype="fp16", BLOCK_D=bd, BLOCK_M=TUTORIAL_BWD["BLOCK_M1"],
                        BLOCK_N=TUTORIAL_BWD["BLOCK_N1"]),
            divisible_by_16=tuple(n for n in fn.arg_names if n not in const and (
                n[0].isupper() or n.startswith("stride")))))
    return cases


def _attention_cases() -> list:
    """The Triton attention AOT cases the attention tables show (fp16, head dims 64 and 128,
    the causal and the non-causal launch), every candidate: the report keeps the survivors."""
    from fastattn.kernels import attention

    return [c for c in attention.aot_cases() if c.config.get("dtype") == "fp16"
            and c.config.get("BLOCK_D") in HEAD_DIMS and c.config.get("variant") in _VARIANTS
            and c.kernel in ATTENTION_KERNELS]


def _records(cases: list, archs: list) -> list:
    from fastattn.buildcheck import triton_aot

    records = triton_aot.kernel_reports(archs, cases=cases, artefacts=True)
    sass_report.analyse(records)
    return records


TUTORIAL_FAMILIES = (
    ("Triton tutorial forward (`06-fused-attention.py` `_attn_fwd_tma`), fp16, for comparison",
     _attention("tutorial_attn_fwd")),
    ("Triton tutorial backward (`_attn_bwd`: dK/dV masked, unmasked; dQ masked, unmasked), fp16, for comparison",
     _attention("tutorial_attn_bwd")),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="80,90", help="comma-separated archs (default 80,90)")
    parser.add_argument("--attention-only", action="store_true", help="only the Triton attention tables")
    parser.add_argument("--tutorial", metavar="PATH", help="the Triton tutorial's 06-fused-attention.py")
    args = parser.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    if args.attention_only:
        records = _records(_attention_cases(), archs)
        families = ATTENTION_FAMILIES
    else:
        report = kernel_report.collect(archs, sass=True)
        for backend, why in report.missing.items():
            print(f"{backend}: not reported: {why}", file=sys.stderr)
        records, families = report.records, FAMILIES
    if args.tutorial:
        records = records + _records(tutorial_cases(args.tutorial), archs)
        families = families + TUTORIAL_FAMILIES
    print(tables(records, families))
    return 0


if __name__ == "__main__":
    sys.exit(main())
