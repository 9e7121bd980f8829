"""Attention with dropout on the CPU: fastattn's native kernel vs torch's SDPA, side by side in
one process.

torch's fused CPU attention kernels take no dropout, so ``torch.nn.functional
.scaled_dot_product_attention(..., dropout_p > 0)`` runs its math path on CPU tensors; that is
the peer a model calling SDPA in training mode gets. The two are timed call by call in turns
(forward only, no grad) and the ratio of medians is printed with the spread of each.

``python benchmarks/bench_cpu_dropout.py [--threads 1] [--reps 5] [--seqlen 2048] [--head-dim 128]``
(``FASTATTN_CPU_ISA=avx2`` runs the native kernel's AVX2 build).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastattn
from fastattn.backends.cpu import attention as cpu_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--full", action="store_true", help="non-causal (default: causal)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, args.seqlen, args.head_dim, generator=gen) for _ in range(3))
    causal = not args.full
    runs = {
        "fastattn": lambda: fastattn.scaled_dot_product_attention(q, k, v, dropout_p=args.dropout, is_causal=causal,
                                                                  backend="cpu"),
        "torch": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=args.dropout,
                                                                          is_causal=causal),
    }
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.reps):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"attention fwd (1, 8, {args.seqlen}, {args.head_dim}) fp32 {'causal' if causal else 'full'} "
          f"dropout {args.dropout}; ISA {cpu_attention.isa()}, {torch.get_num_threads()} threads, {args.reps} reps")
    for name, t in times.items():
        print(f"  {name:9} median {med[name] * 1e3:9.1f} ms  min {min(t) * 1e3:9.1f} ms  spread "
              f"{(max(t) - min(t)) / med[name]:.2f}")
    print(f"  torch / fastattn (medians): {med['torch'] / med['fastattn']:.2f}x")


if __name__ == "__main__":
    main()
