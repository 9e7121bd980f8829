"""Every causal-LM architecture the installed transformers ships, built tiny from its config with
random weights, run with ``attn_implementation="fastattn"`` and with ``"eager"`` on the same
weights and the same left-padded batch. Each architecture has exactly one of three outcomes:

* **equal**: fastattn's logits equal eager's at every real (non-padding) position, greedy
  generation (prefill, then decoding against the KV cache) gives the same tokens, and fastattn's
  attention function really served the model;
* **refused at load**: constructing the model with ``"fastattn"`` raises ``ValueError`` naming the
  class, because its attention does not route through ``AttentionInterface`` (as transformers
  refuses ``"sdpa"`` for it), and ``set_attn_implementation("fastattn")`` never switches it over;
* **refused at the first forward**: the model passes an attention argument that changes the math
  and that fastattn does not implement (``s_aux`` sinks, sparse ``indices``), and fastattn raises
  ``NotImplementedError`` naming it.

Anything else (different logits, a model that silently never calls fastattn, another error)
fails. Architectures whose config cannot be made tiny are listed in ``NOT_TINY`` with the reason;
the test checks that they still cannot (so that the list never goes stale) and skips them.

The full walk is marked slow; ``FAST`` is a representative subset that always runs.
"""
import copy
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fastattn.integrations.transformers as fa_hf  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

VOCAB = 128
SEQ = 9
LEFT_PAD = (3, 0, 1)
NEW_TOKENS = 4
RTOL = 1e-5  # fastattn vs eager logits, relative to the largest |logit| (fp32)

# ----------------------------------------------------------------------------- tiny configs

_SIZES = {
    **dict.fromkeys(["hidden_size", "d_model", "n_embd", "embedding_size", "attention_hidden_size", "dim"], 64),
    **dict.fromkeys(["num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers", "encoder_layers"], 2),
    **dict.fromkeys(["num_attention_heads", "n_head", "n_heads", "num_heads", "decoder_attention_heads",
                     "encoder_attention_heads"], 4),
    **dict.fromkeys(["num_key_value_heads", "num_kv_heads", "multi_query_group_num"], 2),
    **dict.fromkeys(["head_dim", "attention_head_dim", "dim_head", "kv_channels", "v_head_dim", "qk_head_dim"], 16),
    **dict.fromkeys(["intermediate_size", "ffn_dim", "decoder_ffn_dim", "encoder_ffn_dim", "n_inner", "ffn_hidden_size",
                     "dim_ff", "dff", "intermediate_size_mlp", "first_dense_intermediate_size",
                     "mlp_only_intermediate_size"], 64),
    **dict.fromkeys(["moe_intermediate_size", "shared_expert_intermediate_size", "expert_ffn_hidden_size",
                     "shared_intermediate_size", "shared_experts_intermediate_size"], 32),
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"], 4),
    **dict.fromkeys(["num_experts_per_tok", "moe_topk", "moe_k", "num_experts_per_token"], 2),
    **dict.fromkeys(["n_shared_experts", "num_shared_experts", "moe_num_shared_experts"], 1),
    **dict.fromkeys(["n_group", "topk_group", "num_expert_group"], 1),
    **dict.fromkeys(["q_lora_rank", "kv_lora_rank", "o_lora_rank"], 16),
    **dict.fromkeys(["qk_rope_head_dim", "qk_nope_head_dim"], 8),
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"], 128),
    # Shorter than the test sequences, so that sliding-window layers really slide.
    **dict.fromkeys(["sliding_window", "sliding_window_size"], 5),
    "attention_chunk_size": 4,
    **dict.fromkeys(["mamba_d_state", "state_size"], 8),
    **dict.fromkeys(["mamba_n_heads", "linear_num_key_heads", "linear_num_value_heads", "linear_num_heads",
                     "index_n_heads", "index_num_heads"], 2),
    **dict.fromkeys(["mamba_d_head", "linear_key_head_dim", "linear_value_head_dim", "linear_head_dim",
                     "index_head_dim"], 16),
    "mamba_n_groups": 1, "mamba_chunk_size": 8, "time_step_rank": 8, "mamba_d_ssm": 128, "rotary_dim": 8,
    "vocab_size": VOCAB, "vocab_size_per_layer_input": VOCAB, "hidden_size_per_layer_input": 16,
}
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers")
_NO_DROPOUT = ("dropout", "pdrop", "drop_path", "layerdrop")

# What the generic shrinking above cannot infer (layer placement of hybrid models, MoE sizes left
# None by default, validators tying dims together).
_OVERRIDES = {
    "bamba": dict(mamba_n_heads=8, attn_layer_indices=[1]),
    "deepseek_v2": dict(num_experts_per_tok=2),
    "dots1": dict(n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1),
    "falcon_h1": dict(mamba_n_heads=8, mamba_d_head=16),
    "gemma3n_text": dict(num_kv_shared_layers=0),
    "granitemoehybrid": dict(mamba_n_heads=8, layer_types=["linear_attention", "attention"]),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "kolibri1_1": dict(index_layers=[1], kv_source_layers=[0, 1], mlp_only_layers=[0]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "mamba2": dict(expand=1),
    "musicgen": dict(num_codebooks=1), "musicgen_melody": dict(num_codebooks=1),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),
    "reformer": dict(axial_pos_embds_dim=[32, 32], axial_pos_shape=[8, 16]),
    "xlnet": dict(d_head=16),
    "zamba2": dict(hybrid_layer_ids=[1], layers_block_type=["linear_attention", "hybrid"]),
    "zaya": dict(num_experts_per_tok=1),
}

NOT_TINY = {
    "blt": "its byte-patcher sub-models keep their full size (about 190M parameters) and the tiny config "
           "loses num_hidden_layers",
    "cohere_compass_text": "its rotary embedding wants per-layer-type rope parameters the default config lacks",
    "dbrx": "the attention sub-config built from the shrunk dict lacks rope_theta",
    "dory": "its input/recurrent/output layer split does not validate at two layers",
    "dots3_note": "its per-layer sub-configs tie head dims to the full-size layer pattern",
    "dots3_note_text": "its per-layer sub-configs tie head dims to the full-size layer pattern",
    "gemma3n": "its vision tower needs the timm package",
    "gemma4_assistant": "its own default config does not validate",
    "gemma4_unified_assistant": "its cache-sharing layer pattern does not survive shrinking",
    "hrm_text": "its recurrent layer stacks index past a two-layer cache",
    "qwen4_exp": "its indexer needs token_budget/compress_ratio that the default config leaves None",
    "qwen4_exp_text": "its indexer needs token_budget/compress_ratio that the default config leaves None",
    "zamba": "its shared-transformer weight tying does not validate at two layers",
    "zamba2": "its hybrid layers' shapes do not match at this size",
}


def _keep_layers(d: dict) -> list:
    """Indices of the layers a tiny config keeps: the first, and the first of another type."""
    types = d.get("layer_types")
    if isinstance(types, list) and types:
        other = next((i for i, t in enumerate(types) if t != types[0]), 1 if len(types) > 1 else 0)
        return [0, other] if other else [0]
    return [0, 1]


def _shrink(d: dict) -> dict:
    """A config dict (``to_dict()``) with every size made tiny, per-layer lists cut to the kept
    layers, dropout off and every special token id inside the small vocabulary."""
    n_layers = next((d[k] for k in _LAYER_KEYS if isinstance(d.get(k), int)), None)
    keep = _keep_layers(d)
    out = {}
    for k, v in d.items():
        if k == "per_layer_config" and isinstance(v, dict) and v:
            out[k] = {1: v[sorted(v, key=int)[0]]}
        elif k == "rope_parameters" and v == {}:
            continue  # let the config fill in its defaults
        elif k in ("head_dim", "num_key_value_heads") and v is None and k in _SIZES:
            out[k] = _SIZES[k]
        elif isinstance(v, dict) and (k.endswith("config") or "model_type" in v):
            out[k] = _shrink(v)
        elif k in _SIZES and isinstance(v, int) and not isinstance(v, bool):
            out[k] = _SIZES[k]
        elif isinstance(v, float) and any(z in k for z in _NO_DROPOUT):
            out[k] = 0.0
        elif isinstance(v, list) and n_layers and n_layers > 2 and len(v) == n_layers:
            out[k] = [4 if k == "num_attention_heads_per_layer" else v[i] for i in keep]
        else:
            out[k] = v
    if len(keep) == 1:
        for k in _LAYER_KEYS:
            if isinstance(out.get(k), int):
                out[k] = 1
    if "qk_rope_head_dim" in out and isinstance(out.get("head_dim"), int):
        out["head_dim"] = out["qk_rope_head_dim"]  # MLA: head_dim is the rotary part
    if "kv_lora_rank" in out and isinstance(out.get("num_key_value_heads"), int):
        out["num_key_value_heads"] = out.get("num_attention_heads", 4)  # MLA expands K/V per head
    for k, v in list(out.items()):
        if (k.endswith("_token_id") or k.endswith("_token_index")) and isinstance(v, int) and not isinstance(v, bool):
            if not 0 <= v < VOCAB:
                out[k] = VOCAB - 1 - sum(map(ord, k)) % 20  # distinct ids at the top of the vocabulary
    if out.get("pad_token_id") is not None:
        out["pad_token_id"] = 0
    if isinstance(out.get("bos_token_id"), int):
        out["bos_token_id"] = 1
    if isinstance(out.get("eos_token_id"), int):
        out["eos_token_id"] = 2
    return out


def model_class(model_type: str):
    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])


def tiny_config(model_type: str):
    """The causal-LM class's own config class, defaults shrunk to a model of ~1e5 parameters."""
    cls = model_class(model_type).config_class
    d = _shrink(cls().to_dict())
    d.update(_OVERRIDES.get(model_type, {}))
    for k in ("model_type", "transformers_version", "architectures"):
        d.pop(k, None)
    d["is_decoder"] = True  # the *ForCausalLM / *LMHeadModel heads of encoder families decode causally
    return cls.from_dict(d)


def _randomize(model, seed: int = 0):
    """Every floating parameter random (norm weights around 1), so that no layer is trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                ones = p.dim() == 1 and bool((p == 1).all())
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if ones else 0.0))
    return model.eval()


def _prepare(model):
    if hasattr(model, "set_default_language"):  # X-MOD's language adapters
        model.set_default_language("en_XX")
    return model


def build_eager(model_type: str, cfg=None, run: bool = True):
    """(config, eager model with random weights), run once on the padded batch unless ``run`` is
    False: raises when the architecture cannot be made tiny."""
    cfg = tiny_config(model_type) if cfg is None else cfg
    model = _prepare(_randomize(model_class(model_type)._from_config(copy.deepcopy(cfg), attn_implementation="eager")))
    if run:
        ids, mask = padded_batch()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    return cfg, model


def padded_batch(seed: int = 1):
    """Token ids ``(3, SEQ)`` and the left-padding mask (row ``b`` has ``LEFT_PAD[b]`` pads)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB - 30, (len(LEFT_PAD), SEQ), generator=gen)  # clear of special token ids
    mask = torch.ones(len(LEFT_PAD), SEQ, dtype=torch.long)
    for b, pad in enumerate(LEFT_PAD):
        mask[b, :pad] = 0
        ids[b, :pad] = 0
    return ids, mask


# ----------------------------------------------------------------------------- the three outcomes


class _Counting:
    """Stands in for fastattn's registered attention function and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return fa_hf.attention_forward(*args, **kwargs)


def _generate(model, ids, mask):
    return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                          eos_token_id=None, output_logits=True, return_dict_in_generate=True)


def _check_generate(eager, fa, ids, mask, fa_calls):
    """Greedy generation: the same tokens, except where eager's own choice was a near tie (then the
    first differing step must be one)."""
    try:
        want = _generate(eager, ids, mask)
    except Exception as e:  # the tiny config cannot generate at all: fastattn must fail the same way
        with pytest.raises(type(e)):
            _generate(fa, ids, mask)
        return
    calls = fa_calls()
    got = _generate(fa, ids, mask)
    assert fa_calls() > calls, "fastattn did not serve generation"
    if torch.equal(got.sequences, want.sequences):
        return
    new_want, new_got = want.sequences[:, SEQ:], got.sequences[:, SEQ:]
    step = int((new_want != new_got).any(0).nonzero()[0])
    top2 = want.logits[step].float().topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1])[(new_want[:, step] != new_got[:, step])]
    scale = want.logits[step].abs().max()
    assert margin.max() <= 10 * RTOL * scale, (
        f"greedy generation diverges at new token {step} without a near tie: {new_got.tolist()} vs "
        f"{new_want.tolist()}")


def _check_refused_at_load(model_type, cfg, eager):
    name = model_class(model_type).__name__
    with pytest.raises(ValueError, match=rf"{re.escape(name)} does not support attn_implementation='fastattn'"):
        model_class(model_type)._from_config(copy.deepcopy(cfg), attn_implementation="fastattn")
    # On a loaded model transformers either raises too or keeps the current implementation (with a
    # warning): fastattn is never silently switched on for it.
    try:
        eager.set_attn_implementation("fastattn")
    except ValueError as e:
        assert name in str(e)
    assert eager.config._attn_implementation != "fastattn"


def check_architecture(model_type: str, monkeypatch) -> str:
    """Run one architecture through the walk; returns its outcome ("equal", "refused at load",
    "refused at forward") or fails."""
    if model_type in NOT_TINY:
        with pytest.raises(Exception):
            build_eager(model_type)
        pytest.skip(f"{model_type} cannot be built tiny: {NOT_TINY[model_type]}")
    if fa_hf.unsupported_reason(model_class(model_type)) is not None:
        # The refusal comes before any weight exists: the tiny model need not run.
        cfg, eager = build_eager(model_type, run=False)
        _check_refused_at_load(model_type, cfg, eager)
        return "refused at load"
    cfg, eager = build_eager(model_type)

    counting = _Counting()
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "fastattn", counting)
    fa = _prepare(model_class(model_type)._from_config(copy.deepcopy(cfg), attn_implementation="fastattn"))
    assert fa.config._attn_implementation == "fastattn"
    fa.load_state_dict(eager.state_dict())
    fa.eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        want = eager(input_ids=ids, attention_mask=mask).logits
        try:
            got = fa(input_ids=ids, attention_mask=mask).logits
        except NotImplementedError as e:
            named = [k for k in fa_hf.UNSUPPORTED_KWARGS if repr(k) in str(e)]
            assert named, f"NotImplementedError without naming the argument: {e}"
            assert counting.calls >= 1  # raised by fastattn's attention function itself
            return "refused at forward"
    valid = mask.bool()
    assert torch.isfinite(want[valid]).all()
    assert counting.calls > 0, "attn_implementation='fastattn' was accepted but fastattn never ran"
    err = (got - want)[valid].abs().max()
    assert err <= RTOL * want[valid].abs().max(), f"logits differ from eager by {err:.3g}"
    with torch.no_grad():
        _check_generate(eager, fa, ids, mask, lambda: counting.calls)
    return "equal"


ARCHITECTURES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
# Always run: each feature and outcome once (GQA, biased projections, sliding windows, softcap, MLA,
# an encoder family's causal head, absolute positions, hybrid attention/SSM, and every refusal:
# BLOOM and MPT compute attention themselves, Mamba has none, DeepSeek-V3.2 passes sparse
# indices; gpt-oss passes its attention sinks as s_aux, which fastattn implements).
FAST = {
    "llama": "equal", "qwen2": "equal", "mistral": "equal", "gemma2": "equal", "gemma3_text": "equal",
    "gpt2": "equal", "bert": "equal", "deepseek_v3": "equal", "jamba": "equal",
    "bloom": "refused at load", "mpt": "refused at load", "mamba": "refused at load",
    "gpt_oss": "equal", "deepseek_v32": "refused at forward",
}


@pytest.mark.parametrize("model_type", sorted(FAST))
def test_architecture_fast(model_type, monkeypatch):
    assert check_architecture(model_type, monkeypatch) == FAST[model_type]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", [t for t in ARCHITECTURES if t not in FAST])
def test_architecture(model_type, monkeypatch):
    check_architecture(model_type, monkeypatch)


def test_walk_covers_the_installed_architectures():
    """The walk is every causal-LM architecture of the installed transformers, and the lists above
    name only real ones."""
    assert set(FAST) <= set(ARCHITECTURES)
    assert set(NOT_TINY) <= set(ARCHITECTURES) and not set(NOT_TINY) & set(FAST)
    assert set(_OVERRIDES) <= set(ARCHITECTURES)
    assert len(ARCHITECTURES) - len(NOT_TINY) >= 150
