"""Hugging Face transformers integration: ``attn_implementation="fastattn"``.

Importing this module registers, under the name :data:`ATTN_IMPLEMENTATION`:

* :func:`attention_forward` with transformers' ``AttentionInterface`` (the function every
  model's attention layer calls with ``query (B, Hq, Lq, D)``, ``key``/``value``
  ``(B, Hk, Lk, D)`` with the KV cache already appended, and the layer's mask, scaling,
  dropout, sliding window and softcap), and
* :func:`attention_mask` with ``AttentionMaskInterface``: the mask builder the model runs
  once per forward. Without it transformers would build no mask at all for an unknown
  implementation and padding would be silently ignored. It is transformers' SDPA mask
  builder: a boolean ``(B, 1, Lq, Lk)`` mask (``True`` = takes part) holding causality,
  padding and sliding windows, or ``None`` when the pattern is plain causal (``Lq == Lk``, or
  a prefill into an empty static cache) or plain full attention (one decoding query, no
  padding), so that the unmasked kernels run.

Afterwards ``AutoModel.from_config(config, attn_implementation="fastattn")``,
``from_pretrained(..., attn_implementation="fastattn")`` and
``model.set_attn_implementation("fastattn")`` on a loaded model all work.
:func:`fastattn.patch` does the latter for the model families it knows.

Never a silent wrong answer:

* a model class whose attention does not go through ``AttentionInterface`` is refused when
  ``"fastattn"`` is requested (``ValueError`` at construction, load or
  ``set_attn_implementation``), as transformers refuses ``"sdpa"`` for it: such a model would
  ignore the request or, worse, hand its own attention code fastattn's boolean mask (BLOOM
  adds the mask to its scores). See :func:`unsupported_reason`;
* a keyword argument that changes the attention math and that fastattn does not implement
  (attention sinks ``s_aux``, sparse ``indices``, ...) raises ``NotImplementedError`` naming
  it, and an unknown one raises ``TypeError`` naming it; only the arguments listed in
  :data:`IGNORED_KWARGS`, which provably leave the result unchanged, are ignored;
* continuous batching (``generate_batch``, ``ContinuousBatchingManager``, the
  ``PagedAttentionCache``) is served: transformers switches a model to ``"sdpa"``,
  ``"paged|eager"`` or a flash-attention name before it starts and refuses any other name;
  :func:`register` wraps that switch so that a model on a fastattn name keeps it. transformers
  then builds no mask for it (only ``"sdpa"`` and ``"paged|eager"`` get one) and hands each
  layer the batch's packed sequences (``cu_seq_lens_q/k``, the keys gathered from the pages by
  the cache's own ``update``), which :func:`fastattn.flash_attn_varlen_func` serves. The
  block-table decode path (``block_table``, ``k_cache``, ``v_cache``), which transformers only
  enables for flash-attention 2/3 on CUDA, is refused by name.

Which fastattn op serves a call:

* one query token, no mask, no gradient (decoding against the KV cache):
  :func:`fastattn.flash_attn_with_kvcache` (the split-KV decoding kernel), with softcap;
* softcapping (Gemma 2) or a sliding window the mask does not hold, without a mask:
  :func:`fastattn.flash_attn_func` with ``causal``, ``window_size`` and ``softcap``;
* softcapping with a mask (padding, sliding-window layers): the scores are formed
  explicitly, softcapped and normalised by :func:`fastattn.scaled_masked_softmax`, which is
  the math of the model's own eager path (no fused op takes a mask and a softcap);
* packed sequences in one row without a mask (``cu_seq_lens_q/k``, as transformers'
  flash-attention path receives them): :func:`fastattn.flash_attn_varlen_func`, so that no
  token attends across a sequence boundary;
* everything else: :func:`fastattn.scaled_dot_product_attention` with the mask, the
  ``is_causal`` rule of transformers' SDPA integration, ``scale`` and native GQA
  (``enable_gqa``, no repeated key/value heads).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging

import fastattn

try:
    from transformers.generation.continuous_batching.continuous_api import (
        ContinuousBatchingManager as _ContinuousBatchingManager,
    )
except ImportError:  # a transformers without continuous batching
    _ContinuousBatchingManager = None

__all__ = ["ATTN_IMPLEMENTATION", "IGNORED_KWARGS", "IMPLEMENTED_KWARGS", "UNSUPPORTED_KWARGS", "attention_forward",
           "attention_mask", "register", "unsupported_reason"]

ATTN_IMPLEMENTATION = "fastattn"
"""The ``attn_implementation`` name fastattn registers."""

logger = logging.get_logger(__name__)

IMPLEMENTED_KWARGS = frozenset({
    "dropout", "scaling", "is_causal", "sliding_window", "softcap", "position_bias",
    "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",  # packed sequences (varlen)
    "s_aux",  # attention sinks (gpt-oss): fastattn's learnable_sink
    "output_attentions",  # honoured by a warning: weights are never materialised (as transformers' sdpa)
})
"""Keyword arguments :func:`attention_forward` acts on."""

IGNORED_KWARGS = frozenset({
    # Already applied before attention: positions rotate query/key upstream, and packed
    # sequences reach attention through the mask (transformers builds it from position_ids) or
    # through cu_seq_lens_q/k.
    "position_ids", "cache_position", "seq_idx",
    # Bookkeeping of the model's forward, forwarded down to every layer.
    "use_cache", "past_key_values", "output_hidden_states", "output_router_logits", "logits_to_keep",
    "num_items_in_batch", "return_dict",
    # Cross-attention: key and value were already projected from it.
    "encoder_hidden_states",
    # flash-attn's choice of a reproducible backward: no value changes beyond rounding.
    "deterministic",
    # Continuous batching's bookkeeping: the paged cache and the indices its update() has already
    # used to write the new keys and gather each sequence's keys (the key/value passed in are the
    # result), and which rows produce logits and how they are sampled (after attention).
    "cache", "read_index", "write_index", "logits_indices", "logits_processor_args",
})
"""Keyword arguments transformers forwards to the attention function that leave its result
unchanged (ignored). Any other argument with a value other than ``None`` raises."""

UNSUPPORTED_KWARGS = {
    "sinks": "attention sinks: per-head logits that join every softmax denominator",
    "indices": "sparse attention over selected key indices (DeepSeek sparse attention)",
    "block_indices": "block-sparse attention over selected key blocks",
    "block_table": "a paged KV cache read through a block table (transformers' decode fast path)",
    "k_cache": "a paged KV cache read through a block table (transformers' decode fast path)",
    "v_cache": "a paged KV cache read through a block table (transformers' decode fast path)",
    "cache_seqlens": "a paged KV cache",
    "head_mask": "a per-head multiplier of the attention probabilities",
    "use_top_left_mask": "top-left causal alignment for unequal query and key lengths",
}
"""Keyword arguments that change the attention math and that fastattn does not implement:
``{name: what it does}``. Each raises ``NotImplementedError`` naming it."""


def _check_kwargs(kwargs: dict) -> None:
    """Raise for any keyword argument that could change the result and that
    :func:`attention_forward` does not implement. ``None`` values are absent arguments."""
    for name, value in kwargs.items():
        if value is None or name in IMPLEMENTED_KWARGS or name in IGNORED_KWARGS:
            continue
        if name in UNSUPPORTED_KWARGS:
            raise NotImplementedError(
                f"attn_implementation='{ATTN_IMPLEMENTATION}' does not implement the attention argument {name!r} "
                f"({UNSUPPORTED_KWARGS[name]}), which changes the result; load this model with "
                f"attn_implementation='eager' (or one that supports {name!r})")
        raise TypeError(
            f"attn_implementation='{ATTN_IMPLEMENTATION}' got the attention argument {name!r}, which it does not "
            f"know: rather than risk ignoring something that changes the result, it refuses. It implements "
            f"{sorted(IMPLEMENTED_KWARGS)} and ignores {sorted(IGNORED_KWARGS)}")


def attention_mask(*args, **kwargs) -> Optional[torch.Tensor]:
    """The mask builder registered for ``"fastattn"``: transformers' ``sdpa_mask`` (same
    arguments). Returns a bool ``(batch, 1, q_length, kv_length)`` mask, ``True`` = attend,
    or ``None`` when :func:`attention_forward` can derive the pattern itself."""
    return sdpa_mask(*args, **kwargs)


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    position_bias: Optional[torch.Tensor] = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The attention function registered for ``"fastattn"``.

    Args:
        module: the calling attention layer (``is_causal`` is read from it when not passed).
        query: ``(B, Hq, Lq, D)``; key, value: ``(B, Hk, Lk, D)``, ``Hq % Hk == 0``.
        attention_mask: from :func:`attention_mask`: bool ``(B, 1, Lq, Lk)`` (True = attend) or
            ``None``; a float mask (added to the scores) given by the caller is accepted too.
        dropout: attention dropout probability (transformers passes 0 in eval mode).
        scaling: score scale, default ``D ** -0.5``.
        is_causal: the layer's causality; only used when there is no mask and ``Lq > 1``.
        sliding_window: the layer's window (keys ``j > i - sliding_window``); normally already in
            the mask, applied here only when the mask is ``None``.
        softcap: ``softcap * tanh(scores / softcap)`` before masking (Gemma 2); ``None``/0 = off.
        position_bias: an additive score bias (T5-style), folded into a float mask.

        **kwargs: ``cu_seq_lens_q``/``cu_seq_lens_k`` ``(n + 1,)`` and ``max_length_q``/``max_length_k``:
            ``n`` packed sequences in the one row of a ``B == 1`` batch (used when there is no mask;
            a mask, when given, already holds the sequence boundaries); the arguments of
            :data:`IGNORED_KWARGS`. Anything else raises (see :data:`UNSUPPORTED_KWARGS`).

    Returns:
        ``(attn_output (B, Lq, Hq, D), None)``: attention weights are never materialised.

    Raises:
        NotImplementedError: for an argument of :data:`UNSUPPORTED_KWARGS` (e.g. ``sinks``).
        TypeError: for an unknown argument.
    """
    _check_kwargs(kwargs)
    if kwargs.get("output_attentions", False):
        logger.warning_once("attn_implementation='fastattn' never materialises attention weights: "
                            "output_attentions=True returns None for them; use 'eager' to get them.")
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # transformers' SDPA rule: the causal flag only stands in for a missing mask, and one
    # query token (decoding) sees every cached key.
    causal = bool(q_len > 1 and attention_mask is None and causal)
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    packed = attention_mask is None and (cu_q is not None or cu_k is not None)
    if packed:
        # Packed sequences (padding-free training, continuous batching): each sequence's queries
        # are its last tokens, bottom-right aligned, so decoding steps (one query per sequence,
        # every key of it) are causal too.
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    elif causal and kv_len > q_len:
        # Prefill into an empty static cache: the keys past Lq are unused slots (top-left causal).
        key, value = key[:, :, :q_len], value[:, :, :q_len]
        kv_len = q_len
        if position_bias is not None:
            position_bias = position_bias[..., :q_len]
    mask = attention_mask
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        mask = create_position_bias_mask(position_bias, mask, causal, query, key)
        causal = False
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)
    softcap = float(softcap) if softcap else 0.0
    window = sliding_window if (mask is None and causal and sliding_window and kv_len > sliding_window) else None
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    sink = kwargs.get("s_aux")  # gpt-oss's per-head sink logits (H,)

    if packed:
        return _packed_attention(query, key, value, cu_q, cu_k, kwargs, dropout, scaling, causal,
                                 sliding_window, softcap, sink), None
    if mask is None and q_len == 1 and not needs_grad and dropout == 0.0:
        # Decoding: the new token against the whole cache (already appended by transformers).
        out = fastattn.flash_attn_with_kvcache(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), softmax_scale=scaling, softcap=softcap,
            learnable_sink=sink,
        )
        return out, None
    if mask is None and (softcap > 0 or window is not None or sink is not None):
        out = fastattn.flash_attn_func(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p=dropout,
            softmax_scale=scaling, causal=causal,
            window_size=(-1, -1) if window is None else (window - 1, 0), softcap=softcap, learnable_sink=sink,
        )
        return out, None
    if sink is not None:
        return _masked_attention_with_sink(query, key, value, mask, dropout, scaling, softcap, sink), None
    if softcap > 0:
        return _softcapped_masked_attention(query, key, value, mask, dropout, scaling, softcap), None
    out = fastattn.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def _packed_attention(query, key, value, cu_q, cu_k, kwargs, dropout, scaling, causal, sliding_window,
                      softcap, sink=None) -> torch.Tensor:
    """Packed sequences in the one row of a ``B == 1`` batch, sequence ``i`` being tokens
    ``cu[i]:cu[i + 1]``: :func:`fastattn.flash_attn_varlen_func`, causal (bottom-right aligned,
    as transformers' flash path) and windowed within each sequence. Returns ``(1, Lq, Hq, D)``."""
    if query.shape[0] != 1:
        raise ValueError(f"cu_seq_lens_q/cu_seq_lens_k describe packed sequences in one row: the batch must be 1, "
                         f"got query of shape {tuple(query.shape)}")
    if cu_q is None or cu_k is None:
        raise ValueError("cu_seq_lens_q and cu_seq_lens_k must be given together")
    window = (sliding_window - 1, 0) if (causal and sliding_window) else (-1, -1)
    out = fastattn.flash_attn_varlen_func(
        query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu_q, cu_k,
        int(kwargs.get("max_length_q") or 0), int(kwargs.get("max_length_k") or 0), dropout_p=dropout,
        softmax_scale=scaling, causal=causal, window_size=window, softcap=softcap, learnable_sink=sink,
    )
    return out.unsqueeze(0)


def _masked_attention_with_sink(query, key, value, mask, dropout, scaling, softcap, sink) -> torch.Tensor:
    """Attention sinks under the model's mask (gpt-oss with padding): fastattn's core attention op,
    which takes the mask (bool, True = attend, or additive), softcap and the sink logits at once.
    Returns ``(B, Lq, Hq, D)``."""
    from fastattn.functional.attention import _run_core
    from fastattn.attention_args import AttentionArgs, draw_dropout_seed

    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    seed, offset = draw_dropout_seed(dropout)
    args = AttentionArgs(scale=q.shape[-1] ** -0.5 if scaling is None else float(scaling), softcap=softcap,
                         dropout_p=dropout, seed=seed, offset=offset, max_seqlen_q=q.shape[2],
                         max_seqlen_k=k.shape[2])
    full_mask = mask.broadcast_to(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out, _ = _run_core(q, k, v, args, None, attn_mask=full_mask, sink=fastattn.validation.learnable_sink(
        "s_aux", sink, q.shape[1], q.device))
    return out.transpose(1, 2).contiguous()


def _softcapped_masked_attention(query, key, value, mask, dropout, scaling, softcap) -> torch.Tensor:
    """Softcapped attention under an arbitrary mask: explicit scores, the fused
    :func:`fastattn.scaled_masked_softmax`, then the value product. Returns ``(B, Lq, Hq, D)``."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # broadcast each key/value head to its query group (a view until the matmul)
        b, hk, s, d = key.shape
        key = key[:, :, None].expand(b, hk, groups, s, d).reshape(b, hk * groups, s, d)
        value = value[:, :, None].expand(b, hk, groups, s, value.shape[-1]).reshape(b, hk * groups, s, -1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    if mask.dtype == torch.bool:
        # The additive form of the model's own eager path (the dtype's minimum, not -inf), so that
        # rows with no visible key (left padding) come out as eager gives them, not as zeros.
        mask = torch.zeros((), dtype=scores.dtype, device=mask.device).masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = fastattn.scaled_masked_softmax(scores, mask, scale=1.0)
    if dropout > 0.0:
        probs = F.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


# ----------------------------------------------------------------------------- refusing models at load


def unsupported_reason(model_class: type) -> Optional[str]:
    """Why ``model_class`` (a ``PreTrainedModel`` subclass) cannot run with fastattn, or ``None``.

    A model can when its attention goes through transformers' ``AttentionInterface`` (the
    function fastattn registers is then what every attention layer calls) and its masks through
    ``AttentionMaskInterface``. transformers marks such a class by declaring support for a
    pluggable implementation (``_supports_sdpa``, ``_supports_flash_attn`` or
    ``_supports_flex_attn``: each is served through those interfaces), and its attention modules
    look the function up with ``ALL_ATTENTION_FUNCTIONS.get_interface`` (what transformers'
    ``_can_set_attn_implementation`` checks in the class's source). A class that fails either
    would ignore fastattn, or hand its own attention code fastattn's boolean mask (BLOOM adds
    the mask to its scores: silently wrong logits).
    """
    if not any(getattr(model_class, flag, False) for flag in ("_supports_sdpa", "_supports_flash_attn",
                                                              "_supports_flex_attn")):
        return ("it supports none of transformers' pluggable attention implementations (sdpa, flash "
                "attention, flex attention), so its attention code does not take its attention function and "
                "masks from AttentionInterface and AttentionMaskInterface")
    can_set = getattr(model_class, "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        return "some of its attention modules compute attention themselves instead of calling AttentionInterface"
    return None


def _refuse_unsupported_models(get_correct_attn_implementation):
    """Wrap ``PreTrainedModel.get_correct_attn_implementation`` (what model construction,
    ``from_pretrained`` and ``set_attn_implementation`` ask for the implementation to use, and
    where transformers refuses ``"sdpa"`` for models that do not support it) so that it refuses
    fastattn's names (``wrapper._fastattn_names``) for the classes :func:`unsupported_reason`
    rejects."""

    def wrapper(self, requested_attention, is_init_check: bool = False):
        applicable = get_correct_attn_implementation(self, requested_attention, is_init_check)
        if applicable in wrapper._fastattn_names:
            reason = unsupported_reason(type(self))
            if reason is not None:
                raise ValueError(
                    f"{type(self).__name__} does not support attn_implementation={applicable!r}: {reason}. "
                    f"fastattn would be ignored or receive a mask this model's attention does not expect. Use "
                    f"attn_implementation='eager' for this model.")
        return applicable

    wrapper.__wrapped__ = get_correct_attn_implementation
    wrapper.__doc__ = get_correct_attn_implementation.__doc__
    # Kept on the wrapper (not in this module), so that a reloaded module extends the one installed.
    wrapper._fastattn_names = set()
    return wrapper


def _keep_fastattn_in_continuous_batching(switch_to_cb_friendly_attn):
    """Wrap ``ContinuousBatchingManager.switch_to_cb_friendly_attn``, which moves a model to an
    implementation continuous batching knows (``"sdpa"``, ``"paged|eager"`` or flash attention)
    and raises for any other name, so that a model on one of fastattn's names
    (``wrapper._fastattn_names``) keeps it: fastattn serves the packed batches transformers then
    prepares (no mask, ``cu_seq_lens_q/k``) with its varlen kernel. Other names are left to
    transformers."""

    def wrapper(self, model, auto_switch_to_flash: bool = True) -> None:
        if model.config._attn_implementation in wrapper._fastattn_names:
            return None  # nothing to switch; _original_attn_impl stays unset, so nothing is restored either
        return switch_to_cb_friendly_attn(self, model, auto_switch_to_flash)

    wrapper.__wrapped__ = switch_to_cb_friendly_attn
    wrapper.__doc__ = switch_to_cb_friendly_attn.__doc__
    wrapper._fastattn_names = set()
    return wrapper


def _install(owner, attribute: str, make_wrapper, name: str) -> None:
    """Wrap ``owner.attribute`` with ``make_wrapper`` once (a reloaded module extends the wrapper
    already installed) and add ``name`` to the fastattn names it acts on."""
    current = getattr(owner, attribute)
    if not hasattr(current, "_fastattn_names"):
        current = make_wrapper(current)
        setattr(owner, attribute, current)
    current._fastattn_names.add(name)


def register(name: str = ATTN_IMPLEMENTATION) -> str:
    """Register the attention and mask functions under ``name`` (done on import for
    ``"fastattn"``; idempotent), refuse ``name`` for model classes whose attention does not
    route through ``AttentionInterface`` (:func:`unsupported_reason`), and let continuous
    batching run on it. Returns ``name``."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, attention_mask)
    _install(PreTrainedModel, "get_correct_attn_implementation", _refuse_unsupported_models, name)
    if _ContinuousBatchingManager is not None:
        _install(_ContinuousBatchingManager, "switch_to_cb_friendly_attn", _keep_fastattn_in_continuous_batching,
                 name)
    return name


register()
