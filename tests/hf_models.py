"""Tiny randomly initialised Hugging Face models of every family fastattn patches, built
from configs (no download), shared by the patching and transformers-integration tests."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 97
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=64)


def _make(name: str):
    t = transformers
    if name == "llama":  # GQA
        return t.LlamaForCausalLM(t.LlamaConfig(**_COMMON, num_key_value_heads=2))
    if name == "mistral":  # GQA + sliding window shorter than the test sequences
        return t.MistralForCausalLM(t.MistralConfig(**_COMMON, num_key_value_heads=2, sliding_window=5))
    if name == "qwen2":  # MQA, biased q/k/v projections
        return t.Qwen2ForCausalLM(t.Qwen2Config(**_COMMON, num_key_value_heads=1))
    if name == "gemma":  # gated GELU-tanh MLP
        return t.GemmaForCausalLM(t.GemmaConfig(**_COMMON, num_key_value_heads=2, head_dim=8))
    if name == "gemma2":  # softcapping (small, so it bites), sliding/full layers alternating
        return t.Gemma2ForCausalLM(t.Gemma2Config(**_COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                  attn_logit_softcapping=2.0, final_logit_softcapping=5.0))
    if name == "gpt2":  # Conv1D MLP with gelu_new
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                              bos_token_id=1, eos_token_id=2))
    if name == "gpt_neox":
        return t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**_COMMON, hidden_dropout=0.0, attention_dropout=0.0))
    if name == "bert":  # bidirectional, exact GELU
        return t.BertForMaskedLM(t.BertConfig(**_COMMON, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    raise KeyError(name)


FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gemma2", "gpt2", "gpt_neox", "bert"]
DECODERS = [f for f in FAMILIES if f != "bert"]


def make_model(name: str, seed: int = 0, dtype=torch.float32):
    """A tiny model of family ``name`` with every parameter random (biases and norms included,
    so that none of them is trivially zero or one)."""
    torch.manual_seed(seed)
    model = _make(name)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.abs().sum() == p.numel() else 0.0))
    return model.to(dtype).eval()


def batch(seed: int = 1, batch_size: int = 3, seq: int = 11, left_pad=(4, 0, 1)):
    """Token ids and a left-padded attention mask (row ``b`` has ``left_pad[b]`` pads)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, seq), generator=gen)
    mask = torch.ones(batch_size, seq, dtype=torch.long)
    for b, pad in enumerate(left_pad[:batch_size]):
        mask[b, :pad] = 0
        ids[b, :pad] = 0
    return ids, mask


def logits(model, ids, mask=None, **kwargs):
    return model(input_ids=ids, attention_mask=mask, **kwargs).logits
