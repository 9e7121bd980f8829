"""Small Triton kernels whose machine code is known, for tests/test_sass_analysis.py.

Run as a script (``python tests/sass_kernels.py OUTDIR``, in a process without
``TRITON_INTERPRET``) it compiles every :data:`CASES` entry for its arch with no GPU and writes
``OUTDIR/<name>.cubin`` and ``OUTDIR/<name>.ttir``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import triton
import triton.language as tl


@triton.jit
def dot_loop(A, B, C, K, stride_am, stride_bk,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, MASK: tl.constexpr):
    """C = A @ B over K in BK steps: one ``tl.dot`` per iteration (with MASK, its product
    masked below a moving diagonal by ``tl.where`` before accumulating)."""
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    for k in range(0, K, BK):
        a = tl.load(A + offs_m[:, None] * stride_am + (k + offs_k)[None, :])
        b = tl.load(B + (k + offs_k)[:, None] * stride_bk + offs_n[None, :])
        s = tl.dot(a, b)
        if MASK:
            s = tl.where(offs_m[:, None] + k >= offs_n[None, :], s, float("-inf"))
        acc += s
    tl.store(C + offs_m[:, None] * BN + offs_n[None, :], acc)


SIGNATURE = {"A": "*fp16", "B": "*fp16", "C": "*fp32", "K": "i32", "stride_am": "i32", "stride_bk": "i32",
             "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "MASK": "constexpr"}
DIVISIBLE = ("A", "B", "C", "stride_am", "stride_bk")

# name: (arch, tile constexprs, num_warps, extra options)
CASES = {
    "tile64_sm80": (80, dict(BM=64, BN=64, BK=32, MASK=False), 4, {}),
    "tile64_sm90": (90, dict(BM=64, BN=64, BK=32, MASK=False), 4, {}),
    "tile64_masked_sm80": (80, dict(BM=64, BN=64, BK=32, MASK=True), 4, {}),
    "narrow_8warps_sm80": (80, dict(BM=16, BN=32, BK=16, MASK=False), 8, {}),
    "tile128_sm80": (80, dict(BM=128, BN=128, BK=32, MASK=False), 4, {}),
    # 128 x 128 fp32 accumulators are 128 registers a thread on 4 warps: capped at 64, they spill.
    "tile128_spill_sm80": (80, dict(BM=128, BN=128, BK=32, MASK=False), 4, {"maxnreg": 64}),
}


def compile_case(name: str, outdir: Path) -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arch, constexprs, warps, extra = CASES[name]
    names = dot_loop.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in DIVISIBLE}
    src = ASTSource(dot_loop, dict(SIGNATURE), dict(constexprs), attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=warps, num_stages=2, **extra))
    (outdir / f"{name}.cubin").write_bytes(compiled.asm["cubin"])
    (outdir / f"{name}.ttir").write_text(compiled.asm["ttir"])


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for case in sys.argv[2:] or CASES:
        compile_case(case, out)
