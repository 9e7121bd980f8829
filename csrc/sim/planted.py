"""Planted-bug variants of the real kernels: each is a copy of csrc/ with one deliberate,
realistic bug (sim_sources.py --planted NAME applies it), compiled with a small driver from
csrc/sim/tests/planted/ into its own executable that is never part of the shipped build.
Each variant must fail under the simulator, with a message naming the kernel and showing
the reason; each driver also runs unmodified (its "control") and must pass, so a failure
is the bug's doing.

A bug's `anchor` is text that occurs exactly once in its file and `replacement` what it
becomes (no more lines than the anchor: lines keep their numbers). When a kernel changes so
that an anchor no longer matches, the variant fails to build with an #error saying so:
update the anchor here to the new code.

`build` is the configuration that must catch it: "plain" (the simulator's own checks),
"tsan" (ThreadSanitizer) or "asan" (AddressSanitizer). `expect` lists regular expressions
that must all match the failing run's output; `any_of` at least one (for bugs whose
message depends on which thread gets there first, e.g. a missing barrier: the reader may
overtake the writer's wait, or not).
"""
from __future__ import annotations

from dataclasses import dataclass, field

FLASH = "cuda/attention/flash_fwd.cuh"
FLASH_BWD = "cuda/attention/flash_bwd.cuh"
FLASH_BWD_DQ = "cuda/attention/flash_bwd_dq.cuh"
DECODE = "cuda/decode/split_kv.cuh"
SOFTMAX = "cuda/softmax/scaled_masked_softmax.cuh"

FLASH_KERNEL = r"flash_fwd_kernel<__half, 64, false>"
DKDV_KERNEL = r"flash_bwd_dkdv_kernel<__half, 64, 64>"
DQ_KERNEL = r"flash_bwd_dq_kernel<__half, 64, 64>"
NOT_WAITED = r"was not waited for before the last __syncthreads\(\)"
NOT_SEPARATED = r"not separated by a barrier"
NO_BARRIER_SINCE_WAIT = r"no __syncthreads\(\) since its cp_async_wait"


@dataclass(frozen=True)
class Bug:
    name: str
    file: str  # relative to csrc/
    anchor: str
    replacement: str
    driver: str  # csrc/sim/tests/planted/<driver>.cpp
    args: tuple[str, ...]
    build: str
    expect: tuple[str, ...]
    any_of: tuple[str, ...] = field(default=())
    why: str = ""


def _wait_bug(name: str, file: str, anchor: str, replacement: str, driver: str, kernel: str, why: str) -> Bug:
    """A cp.async wait removed or made too shallow: the copies' data is read in flight."""
    return Bug(name, file, anchor, replacement, driver, (), "plain", expect=(kernel, NOT_WAITED), why=why)


def _barrier_bug(name: str, file: str, anchor: str, replacement: str, driver: str, kernel: str, why: str) -> Bug:
    """A barrier removed or a wait made too shallow: whichever thread gets there first decides
    which of the simulator's three ordering checks reports it, so any one of them will do."""
    return Bug(name, file, anchor, replacement, driver, (), "plain", expect=(kernel,),
               any_of=(NO_BARRIER_SINCE_WAIT, NOT_SEPARATED, NOT_WAITED), why=why)


def _sanitizer_bug(name: str, file: str, anchor: str, replacement: str, driver: str, args: tuple[str, ...],
                   report: str, kernel: str, why: str) -> Bug:
    """A bug only a sanitizer sees: its build and report ("tsan": a data race, "asan": a heap
    overflow), naming the kernel."""
    message = {"tsan": r"WARNING: ThreadSanitizer: data race", "asan": r"AddressSanitizer: heap-buffer-overflow"}
    return Bug(name, file, anchor, replacement, driver, args, report, expect=(message[report], kernel), why=why)


def _check_bug(name: str, file: str, anchor: str, replacement: str, driver: str, kernel: str, message: str,
               why: str, args: tuple[str, ...] = ()) -> Bug:
    """A bug one of the simulator's own checks reports with `message` (or, for "NaN", the
    driver's comparison), naming the kernel."""
    return Bug(name, file, anchor, replacement, driver, args, "plain", expect=(kernel, message), why=why)


_LIST = [
    _wait_bug("attn_missing_wait", FLASH, "    cp_async_wait<0>();  // K tile t\n",
              "    /* planted: cp_async_wait<0>() missing */\n", "planted_attention", FLASH_KERNEL,
              why="K tile t is read while its cp.async group is still in flight"),
    _wait_bug("attn_shallow_wait", FLASH, "    cp_async_wait<0>();  // V tile t\n",
              "    cp_async_wait<1>();  /* planted: one group too many left in flight */\n", "planted_attention",
              FLASH_KERNEL, why="wait_group 1 leaves V tile t's group, the newest, in flight when O += P V reads it"),
    _barrier_bug(
        "attn_no_barrier_after_wait", FLASH,
        "    cp_async_wait<0>();  // K tile t\n"
        "    __syncthreads();     // ...landed for every thread, and every warp is done with V tile t + 1\n",
        "    cp_async_wait<0>();  // K tile t\n"
        "    /* planted: no __syncthreads() after the wait */\n",
        "planted_attention", FLASH_KERNEL,
        why="a warp reads K rows that other threads' copies delivered, before any barrier, and V's "
            "buffer is refilled while slower warps still read it"),
    _barrier_bug(
        "attn_no_barrier_before_refill", FLASH,
        "    __syncthreads();     // ...landed for every thread, and every warp is done with K tile t\n",
        "    /* planted: no barrier before K's buffer is refilled */\n",
        "planted_attention", FLASH_KERNEL,
        why="the next K tile's cp.async overwrites the buffer a slower warp is still reading (and "
            "V's rows are read before the barrier that publishes them)"),
    _check_bug(
        "attn_partial_mask_shuffle", FLASH, "        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));\n",
        "        mx = fmaxf(mx, __shfl_xor_sync(0x3u << (lane & ~1), mx, 2));  /* planted: pair mask */\n",
        "planted_attention", FLASH_KERNEL, r"__shfl_xor_sync reads lane \d+, which is not in mask 0x[0-9a-f]{8}",
        why="the quad max reads the lane two away, which the (pair) mask leaves out"),
    _check_bug(
        "attn_misaligned_ldmatrix", FLASH,
        "      for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(qf[mt][ks], sQ + q_lane.at(ks, warp * WR + mt * 16));\n",
        "      for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(qf[mt][ks], sQ + q_lane.at(ks, warp * WR + mt * 16) + 4);\n",
        "planted_attention", FLASH_KERNEL, r"ldmatrix row address 0x[0-9a-f]+ \(matrix \d\) is not 16-byte aligned",
        why="a Q row address 8 bytes past a 16-byte boundary"),
    _wait_bug("attn_bwd_missing_wait", FLASH_BWD, "    cp_async_wait<0>();  // Q, lse, delta and dO of this step\n",
              "    /* planted: cp_async_wait<0>() missing */\n", "planted_attention_bwd", DKDV_KERNEL,
              why="the step's Q and dO tiles are read while their cp.async groups are still in flight"),
    _barrier_bug(
        "attn_bwd_no_barrier_before_do_refill", FLASH_BWD,
        "    __syncthreads();  // every warp is done with dO (refilled next) and dS^T is complete\n",
        "    /* planted: no barrier between dV/dS^T and the dO refill */\n",
        "planted_attention_bwd", DKDV_KERNEL,
        why="the next dO tile is copied over the one slower warps still read for dV and dP, and dQ "
            "reads other warps' dS^T rows before they are all written"),
    _barrier_bug(
        "attn_bwd_dq_no_barrier_after_wait", FLASH_BWD_DQ,
        "    __syncthreads();     // ...landed for every thread; every warp is done with block t - 1's stage\n",
        "    /* planted: no __syncthreads() after the wait */\n",
        "planted_attention_bwd", DQ_KERNEL,
        why="the deterministic dq pass reads K/V rows other threads copied before any barrier, and "
            "refills the stage a slower warp still reads"),
    _check_bug(
        "decode_static_smem_unwritten", DECODE, "    if (d < Dv) partial_o[warp][d] = acc[c];\n",
        "    if (d < Dv && warp < n) partial_o[warp][d] = acc[c];  /* planted: idle warps skip */\n",
        "planted_decode", r"split_kv_decode_kernel<float>", r"NaN",
        why="warps with no key skip their partial, which the merge reads anyway; static shared "
            "memory used to be zero-initialised and shared by all blocks, which hid this"),
    _sanitizer_bug(
        "decode_no_barrier_before_merge", DECODE,
        "    if (d < Dv) partial_o[warp][d] = acc[c];\n  }\n  __syncthreads();\n",
        "    if (d < Dv) partial_o[warp][d] = acc[c];\n  }\n  /* planted: no barrier before the merge */\n",
        "planted_decode", (), "tsan", r"split_kv_decode_kernel<float>",
        why="the merge reads other warps' partial outputs in static shared memory before they are "
            "all written: usually right by timing, a data race all the same"),
    _check_bug(
        "softmax_unaligned_vector", SOFTMAX, "  const bool x_vec = xs.k == 1 && is_aligned(xr, 16);\n",
        "  const bool x_vec = xs.k == 1;  /* planted: alignment not checked */\n", "planted_softmax",
        r"scaled_masked_softmax_fwd_kernel<float>", r"vector load of 16 bytes at 0x[0-9a-f]+ is not 16-byte aligned",
        why="a 16-byte load from a row that starts 4 bytes past a 16-byte boundary", args=("misaligned",)),
    _sanitizer_bug(
        "softmax_vector_tail_overrun", SOFTMAX, "      if (x_vec && n == N) {\n",
        "      if (x_vec) {  /* planted: the ragged tail is loaded as a whole vector */\n",
        "planted_softmax", ("tail",), "asan", r"scaled_masked_softmax_fwd_kernel",
        why="the last chunk of a 301-float row is read as 4 floats: 12 bytes past the tensor"),
]

BUGS: dict[str, Bug] = {b.name: b for b in _LIST}

# The unmodified drivers (each must pass, in every build), with the arguments each bug uses.
CONTROLS: dict[str, list[tuple[str, ...]]] = {}
for _b in _LIST:
    CONTROLS.setdefault(_b.driver, [])
    if _b.args not in CONTROLS[_b.driver]:
        CONTROLS[_b.driver].append(_b.args)


def cmake_lines() -> str:
    """For csrc/sim/CMakeLists.txt: one `name:driver` line per bug, then `control:driver`."""
    lines = [f"{b.name}:{b.driver}" for b in _LIST]
    lines += [f"control:{d}" for d in CONTROLS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--cmake"]:
        sys.stdout.write(cmake_lines())
    else:
        for b in _LIST:
            print(f"{b.name:34s} {b.build:5s} {b.why}")
