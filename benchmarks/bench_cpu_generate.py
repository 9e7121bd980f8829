"""Greedy ``generate`` tokens/s of a small Hugging Face Llama on the CPU: the model as loaded
(``attn_implementation="sdpa"``, torch's SDPA) against the same weights after
``fastattn.patch(model)`` (fastattn's attention through ``attn_implementation="fastattn"``,
and its fused MLP), same process.

    python benchmarks/bench_cpu_generate.py [--threads 1,2] [--dtypes float32,bfloat16]
                                            [--batch 1] [--prompt 128] [--new 64] [--reps 3]
                                            [--json PATH]

The model is built from a Llama config with random weights (no download): 8 layers, hidden
size 512, 8 query heads sharing 2 kv heads of 64 dims, an MLP of 1408, a vocabulary of 32000.
Each timed call is ``model.generate(ids, max_new_tokens=N, do_sample=False)`` with a dynamic
cache (prefill of the prompt, then N - 1 one-token decoding steps); the two models are timed
in turns, call by call, so that a change in machine load hits both alike. Reported: the
median wall time, tokens/s (``batch * N`` over it) and the ratio sdpa time / fastattn time
(> 1: fastattn faster), and the same ratio of the process's CPU time per call (at one thread
the steadier figure on a shared machine: it leaves out the time other processes held the
core). The generated tokens of both are compared: a benchmark of a model
that answers differently would be meaningless, so a mismatch is printed (not timed away).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

import fastattn  # noqa: E402
import fastattn.integrations.transformers  # noqa: E402,F401  (registers attn_implementation="fastattn")


def build_model(dtype: torch.dtype, seed: int = 0):
    """A small random-weight Llama (``LlamaForCausalLM``) in ``dtype``, eval mode, SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                         attn_implementation="sdpa")
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def generate(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0)


def run(dtype: torch.dtype, threads: int, batch: int, prompt: int, new: int, reps: int) -> dict:
    torch.set_num_threads(threads)
    sdpa = build_model(dtype)
    fast = copy.deepcopy(sdpa)
    report = fastattn.patch(fast)  # in place: same weights, fastattn's attention and MLP
    models = {"sdpa": sdpa, "fastattn": fast}
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 32000, (batch, prompt), generator=gen)
    outputs = {name: generate(m, ids, new) for name, m in models.items()}  # warm-up, and the tokens
    same = torch.equal(outputs["sdpa"], outputs["fastattn"])
    times: dict = {name: [] for name in models}
    cpu: dict = {name: [] for name in models}
    for _ in range(reps):
        for name, m in models.items():
            c0, t0 = time.process_time(), time.perf_counter()
            generate(m, ids, new)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {name: statistics.median(t) for name, t in times.items()}
    cpu_med = {name: statistics.median(t) for name, t in cpu.items()}
    return dict(dtype=str(dtype).replace("torch.", ""), threads=threads, batch=batch, prompt=prompt, new=new,
                same_tokens=same, median_s=med, tokens_per_s={n: batch * new / s for n, s in med.items()},
                ratio=med["sdpa"] / med["fastattn"], times_s=times, cpu_median_s=cpu_med,
                cpu_ratio=cpu_med["sdpa"] / cpu_med["fastattn"], cpu_times_s=cpu,
                attn_implementation=fast.config._attn_implementation, patch_report=str(report))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    a = parser.parse_args()
    rows = []
    for dtype in (getattr(torch, d) for d in a.dtypes.split(",")):
        for threads in (int(t) for t in a.threads.split(",")):
            r = run(dtype, threads, a.batch, a.prompt, a.new, a.reps)
            rows.append(r)
            print(f"{r['dtype']:9s} thr={threads} b{a.batch} prompt {a.prompt} +{a.new}: "
                  f"sdpa {r['tokens_per_s']['sdpa']:7.1f} tok/s ({r['median_s']['sdpa'] * 1e3:8.1f} ms)  "
                  f"fastattn {r['tokens_per_s']['fastattn']:7.1f} tok/s ({r['median_s']['fastattn'] * 1e3:8.1f} ms)  "
                  f"x{r['ratio']:.3f} (CPU time x{r['cpu_ratio']:.3f})  same tokens: {r['same_tokens']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(environment=environment(), rows=rows), indent=1, default=str))


if __name__ == "__main__":
    main()
