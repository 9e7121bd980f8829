"""KV-cache decoding on the CPU: fastattn's native kernel vs torch's flash CPU kernel, side by
side in one process, over the cases ``auto`` must decide between them.

    python benchmarks/bench_cpu_crossover.py [--configs mha-d128,gqa4-d128] [--batches 4]
        [--keys 512,2048,8192] [--dtypes float32,bfloat16] [--threads 1] [--reps 9]
        [--write | --merge] [--json PATH]

``--configs`` names the head layouts: ``mha-d128`` (8 query heads over 8 kv heads of 128 dims),
``gqa4-d128`` (32 over 8, 128 dims), ``gqa8/2-d64`` (8 over 2, 64 dims: a small Llama's). Each
case is (config, batch, cache length, dtype, thread count): one query row per sequence, every
cache full.

``--write`` stores the table as ``fastattn/backends/cpu/decode_crossover.json``, which ``auto``
reads (:mod:`fastattn.backends.cpu.decode_crossover`); ``--merge`` adds the run's entries to
the stored table (replacing those of the same case). Each entry holds the ratio of torch's time
to fastattn's (below 1: torch is faster, and ``auto`` decodes that case on torch's kernel),
the medians of both, and the fastest calls. "torch" for GQA includes expanding the kv heads
(that kernel takes no groups), which is what ``auto`` would run instead. The two are timed call
by call in turns (a change in machine load hits both alike). The record names the CPU, the ISA
the native kernel used (``FASTATTN_CPU_ISA`` forces a lower one; a forced run is refused by
``--write``/``--merge``: the table serves this machine's own ISA) and the thread counts.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastattn_bench.crossover import run_record, store  # noqa: E402
from fastattn_bench.measure import time_in_turns  # noqa: E402

import fastattn  # noqa: E402
from fastattn.backends.cpu import attention as cpu_attention  # noqa: E402
from fastattn.backends.cpu.decode_crossover import TABLE, torch_decode  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CONFIGS = {  # name: (query heads per kv head, kv heads, head dim)
    "mha-d128": (1, 8, 128),
    "gqa4-d128": (4, 8, 128),
    "gqa8/2-d64": (4, 2, 64),
}
KEY_FIELDS = ("dtype", "group", "heads_k", "head_dim", "batch", "keys", "threads")
"""What identifies an entry: ``--merge`` replaces a stored entry with the same values."""


def measure(dtype: torch.dtype, config: str, batch: int, keys: int, threads: int, reps: int) -> dict:
    """One case: both kernels timed in turns; the medians, the fastest calls and the ratio of
    torch's median to fastattn's."""
    torch.set_num_threads(threads)
    group, heads_k, head_dim = CONFIGS[config]
    gen = torch.Generator().manual_seed(keys + group + batch)
    q = torch.randn(batch, 1, heads_k * group, head_dim, generator=gen).to(dtype)
    k_cache, v_cache = (torch.randn(batch, keys, heads_k, head_dim, generator=gen).to(dtype) for _ in range(2))
    lens = torch.full((batch,), keys, dtype=torch.int32)
    scale = head_dim ** -0.5
    runs = {
        "fastattn": lambda: fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, causal=True,
                                                             return_softmax_lse=True, backend="cpu"),
        "torch": lambda: torch_decode(q, k_cache, v_cache, None, None, lens, scale),
    }
    ours, theirs = runs["fastattn"](), runs["torch"]()
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # the same problem, to the dtype's rounding
    torch.testing.assert_close(ours[0].float(), theirs[0].float(), rtol=tol, atol=tol)
    for fn in runs.values():
        fn()  # warm-up
    times = {name: wall for name, (wall, _) in time_in_turns(runs, reps).items()}
    med = {name: statistics.median(t) for name, t in times.items()}
    return dict(dtype=str(dtype).replace("torch.", ""), config=config, group=group, heads_k=heads_k,
                head_dim=head_dim, batch=batch, keys=keys, threads=threads, isa=cpu_attention.isa(),
                fastattn_ms=med["fastattn"] * 1e3, torch_ms=med["torch"] * 1e3,
                fastest_ms={name: min(t) * 1e3 for name, t in times.items()},
                spread_ms={name: (max(t) - min(t)) * 1e3 for name, t in times.items()},
                torch_over_fastattn=med["torch"] / med["fastattn"])


def _merged(entries: list[dict]) -> list[dict]:
    """The stored table's entries with this run's replacing those of the same case."""
    stored = TABLE.stored().get("entries", [])
    new_keys = {tuple(e[f] for f in KEY_FIELDS) for e in entries}
    kept = [e for e in stored if tuple(e.get(f) for f in KEY_FIELDS) not in new_keys]
    return kept + entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="mha-d128,gqa4-d128", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--batches", default="4")
    parser.add_argument("--keys", default="512,2048,8192")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--threads", default=None, help="thread counts, e.g. 1,2 (default: torch's)")
    parser.add_argument("--reps", type=int, default=9)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"store the table as {TABLE.path}")
    mode.add_argument("--merge", action="store_true", help=f"add this run's entries to {TABLE.path}")
    parser.add_argument("--json", type=Path, help="also write this run's entries and environment here")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    forced = os.environ.get(cpu_attention.ISA_ENV, "").strip().lower() not in ("", "auto")
    if forced and (args.write or args.merge):
        parser.error(f"{cpu_attention.ISA_ENV} forces a lower ISA: the table serves this machine's own")
    cases = itertools.product(args.dtypes.split(","), args.configs.split(","), [int(b) for b in args.batches.split(",")],
                              [int(k) for k in args.keys.split(",")], threads)
    print(f"ISA {cpu_attention.isa()}; medians of {args.reps} (fastest in parentheses)")
    print(f"{'dtype':9} {'config':11} {'batch':>5} {'keys':>6} {'thr':>3} {'fastattn ms':>18} {'torch ms':>18} "
          f"{'torch/fastattn':>15}  auto")
    entries = []
    for dtype, config, batch, keys, nt in cases:
        e = measure(DTYPES[dtype], config, batch, keys, nt, args.reps)
        entries.append(e)
        pick = "torch" if e["torch_over_fastattn"] < 1 else "fastattn"
        fast = e["fastest_ms"]
        print(f"{dtype:9} {config:11} {batch:>5} {keys:>6} {nt:>3} {e['fastattn_ms']:>8.2f} ({fast['fastattn']:>7.2f}) "
              f"{e['torch_ms']:>8.2f} ({fast['torch']:>7.2f}) {e['torch_over_fastattn']:>15.2f}  {pick}", flush=True)
    record, env = run_record("bench_cpu_crossover.py", entries, threads, isa=cpu_attention.isa())
    store(record, env, args.json)
    if args.write or args.merge:
        # The table keeps every command that measured its entries.
        stored = TABLE.stored() if args.merge else {}
        commands = stored.get("commands", [stored["command"]] if "command" in stored else []) + [record["command"]]
        table = dict(machine=record["machine"], commands=commands,
                     entries=_merged(entries) if args.merge else entries)
        store(table, env, None, TABLE)


if __name__ == "__main__":
    main()
