"""Swap fastattn into a Llama model in one call, prove nothing changed, and time it.

The model is built from a config with random weights (no download), so this runs anywhere:

    python examples/swap_into_llama.py              # CPU, small model
    python examples/swap_into_llama.py --device cuda --dtype bfloat16 --layers 8 --hidden 1024

Steps: build -> fastattn.verify (logits and gradients against the model's own attention and
MLP) -> fastattn.patch -> time forward passes and greedy generation before and after ->
fastattn.unpatch (the original model back, bit for bit).
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import fastattn


def build(args) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 64 * 64 or 64,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=4 * args.seq,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = build(args)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)
    mask = torch.ones_like(ids)
    mask[0, : args.seq // 4] = 0  # a left-padded row

    rtol = 1e-4 if args.dtype == "float32" else 2e-2
    report = fastattn.verify(model, ids, attention_mask=mask, rtol=rtol)
    print(report, end="\n\n")

    with torch.no_grad():
        before = model(ids, attention_mask=mask).logits
        t_orig = timed(lambda: model(ids, attention_mask=mask), args.repeats)
        gen_kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        tokens_orig = model.generate(ids[1:], **gen_kwargs)

    print(fastattn.patch(model), end="\n\n")
    with torch.no_grad():
        t_fast = timed(lambda: model(ids, attention_mask=mask), args.repeats)
        tokens_fast = model.generate(ids[1:], **gen_kwargs)
    print(f"forward ({args.batch} x {args.seq} tokens, {args.dtype}, {args.device}): "
          f"original {t_orig * 1e3:.2f} ms, fastattn {t_fast * 1e3:.2f} ms")
    print(f"greedy generation of {args.new_tokens} tokens identical: {torch.equal(tokens_orig, tokens_fast)}")

    fastattn.unpatch(model)
    with torch.no_grad():
        restored = torch.equal(model(ids, attention_mask=mask).logits, before)
    print(f"unpatch restored the original outputs bit for bit: {restored}")


if __name__ == "__main__":
    main()
