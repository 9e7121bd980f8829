"""KV-cache decoding on the CPU: fastattn's native kernel vs torch's flash CPU kernel, side by
side in one process, over the cases ``auto`` must decide between them.

``python benchmarks/bench_cpu_crossover.py`` prints the table; ``--write`` also stores it as
``fastattn/backends/cpu_decode_crossover.json``, which ``auto`` reads
(:mod:`fastattn.backends.cpu_decode_crossover`): for each (dtype, query heads per kv head,
cache length), the ratio of torch's time to fastattn's (below 1: torch is faster, and
``auto`` decodes that case on torch's kernel). The two are timed call by call in turns, so a
change in machine load hits both alike. The time of each is its fastest call (``*_ms``):
on a shared machine the other calls carry other processes' time slices (a parallel region
waits for its slowest thread), which says nothing about either kernel; the medians and
spreads are recorded beside it. The entry records the CPU, the ISA the native kernel used
(``FASTATTN_CPU_ISA`` forces a lower one) and the thread count (``--threads``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

import fastattn  # noqa: E402
from fastattn.backends import cpu_attention  # noqa: E402
from fastattn.backends.cpu_decode_crossover import TABLE_PATH, torch_decode  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GROUPS = (1, 4)  # query heads per kv head: MHA and GQA 32/8
KEYS = (512, 2048, 8192)
BATCH, HEADS_K, HEAD_DIM = 4, 8, 128


def measure(dtype: torch.dtype, group: int, keys: int, reps: int) -> dict:
    gen = torch.Generator().manual_seed(keys + group)
    q = torch.randn(BATCH, 1, HEADS_K * group, HEAD_DIM, generator=gen).to(dtype)
    k_cache, v_cache = (torch.randn(BATCH, keys, HEADS_K, HEAD_DIM, generator=gen).to(dtype) for _ in range(2))
    lens = torch.full((BATCH,), keys, dtype=torch.int32)
    scale = HEAD_DIM ** -0.5
    runs = {
        "fastattn": lambda: fastattn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, causal=True,
                                                             return_softmax_lse=True, backend="cpu"),
        "torch": lambda: torch_decode(q, k_cache, v_cache, None, None, lens, scale),
    }
    ours, theirs = runs["fastattn"](), runs["torch"]()
    torch.testing.assert_close(ours[0].float(), theirs[0].float(), rtol=2e-2, atol=2e-2)  # the same problem
    times = {name: [] for name in runs}
    for name, fn in runs.items():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    return dict(dtype=str(dtype).replace("torch.", ""), group=group, keys=keys, batch=BATCH, heads_k=HEADS_K,
                head_dim=HEAD_DIM, fastattn_ms=best["fastattn"] * 1e3, torch_ms=best["torch"] * 1e3,
                median_ms={name: statistics.median(t) * 1e3 for name, t in times.items()},
                spread_ms={name: (max(t) - min(t)) * 1e3 for name, t in times.items()},
                torch_over_fastattn=best["torch"] / best["fastattn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--write", action="store_true", help=f"store the table as {TABLE_PATH}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = [measure(DTYPES[d], g, n, args.reps) for d, g, n in itertools.product(DTYPES, GROUPS, KEYS)]
    print(f"ISA {cpu_attention.isa()}, {torch.get_num_threads()} threads; best of {args.reps} (median)")
    print(f"{'dtype':9} {'group':>5} {'keys':>6} {'fastattn ms':>18} {'torch ms':>18} {'torch/fastattn':>15}  auto")
    for e in entries:
        pick = "torch" if e["torch_over_fastattn"] < 1 else "fastattn"
        med = e["median_ms"]
        print(f"{e['dtype']:9} {e['group']:>5} {e['keys']:>6} {e['fastattn_ms']:>8.2f} ({med['fastattn']:>7.2f}) "
              f"{e['torch_ms']:>8.2f} ({med['torch']:>7.2f}) {e['torch_over_fastattn']:>15.2f}  {pick}")
    env = environment("cpu")
    machine = dict(cpu=env["cpu_model"], cores=env["cpu_cores"], isa=cpu_attention.isa(), threads=env["torch_threads"],
                   torch=env["torch"], commit=env["git_commit"], load_average=env["load_average"])
    if args.write:
        command = " ".join(["python benchmarks/bench_cpu_crossover.py"] + sys.argv[1:])
        TABLE_PATH.write_text(json.dumps(dict(machine=machine, command=command, entries=entries), indent=1) + "\n")
        print(f"wrote {TABLE_PATH}")


if __name__ == "__main__":
    main()
