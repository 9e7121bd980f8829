"""The "Static analysis (no GPU)" tables of benchmarks/RESULTS.md.

Compiles every kernel config the autotuners keep (cached; see ``python -m fastattn info
--kernels --sass``), analyses the main loops of their machine code, and prints one Markdown
table per kernel family at head dims 64 and 128, 16-bit, for sm_80 and sm_90a: Triton
attention forward, dK/dV, dQ, split-KV decode, FFN gate/up GEMM, and the CUDA C++ attention
forward. Every figure is a static ceiling (an upper bound from instruction counts), not a
measured speed.

Usage: python benchmarks/static_analysis.py > tables.md
"""
from __future__ import annotations

import argparse
import sys

from fastattn import kernel_report, sass_report

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
    ("Triton split-KV decode (`decode_split`, `decode_direct`), fp16, no window/softcap/ALiBi", _decode()),
    ("Triton FFN gate/up GEMM (`feed_forward_gate_up_fwd`/`_bwd`), 16-bit (bf16 build; fp16 differs only in "
     "conversions), one activation", _ffn()),
    ("CUDA C++ attention forward (`flash_fwd_kernel`), fp16", _cuda_attention()),
)

HEADER = ("kernel", "config", "arch", "main loop", "MMA/warp", "redund.", "non-MMA/4kF", "smem B/F", "MUFU", "SEL",
          "local B", "issue", "smem", "mufu", "fp32", "static ceiling")


def tables(records: list) -> str:
    """The Markdown tables of :data:`FAMILIES` from analysed kernel records."""
    out = []
    for title, (pick, text, order) in FAMILIES:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="80,90", help="comma-separated archs (default 80,90)")
    args = parser.parse_args(argv)
    report = kernel_report.collect([a for a in args.archs.split(",") if a], sass=True)
    for backend, why in report.missing.items():
        print(f"{backend}: not reported: {why}", file=sys.stderr)
    print(tables(report.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
