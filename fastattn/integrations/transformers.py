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

Which fastattn op serves a call:

* one query token, no mask, no gradient (decoding against the KV cache):
  :func:`fastattn.flash_attn_with_kvcache` (the split-KV decoding kernel), with softcap;
* softcapping (Gemma 2) or a sliding window the mask does not hold, without a mask:
  :func:`fastattn.flash_attn_func` with ``causal``, ``window_size`` and ``softcap``;
* softcapping with a mask (padding, sliding-window layers): the scores are formed
  explicitly, softcapped and normalised by :func:`fastattn.scaled_masked_softmax`, which is
  the math of the model's own eager path (no fused op takes a mask and a softcap);
* everything else: :func:`fastattn.scaled_dot_product_attention` with the mask, the
  ``is_causal`` rule of transformers' SDPA integration, ``scale`` and native GQA
  (``enable_gqa``, no repeated key/value heads).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging

import fastattn

__all__ = ["ATTN_IMPLEMENTATION", "attention_forward", "attention_mask", "register"]

ATTN_IMPLEMENTATION = "fastattn"
"""The ``attn_implementation`` name fastattn registers."""

logger = logging.get_logger(__name__)


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

    Returns:
        ``(attn_output (B, Lq, Hq, D), None)``: attention weights are never materialised.
    """
    cache = kwargs.get("cache")
    if cache is not None and type(cache).__name__ == "PagedAttentionCache":
        raise NotImplementedError("attn_implementation='fastattn' does not serve paged (continuous-batching) "
                                  "caches; use the default dynamic or static cache")
    if kwargs.get("output_attentions", False):
        logger.warning_once("attn_implementation='fastattn' never materialises attention weights: "
                            "output_attentions=True returns None for them; use 'eager' to get them.")
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # transformers' SDPA rule: the causal flag only stands in for a missing mask, and one
    # query token (decoding) sees every cached key.
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if causal and kv_len > q_len:
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

    if mask is None and q_len == 1 and not needs_grad and dropout == 0.0:
        # Decoding: the new token against the whole cache (already appended by transformers).
        out = fastattn.flash_attn_with_kvcache(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), softmax_scale=scaling, softcap=softcap,
        )
        return out, None
    if softcap > 0 or window is not None:
        if mask is None:
            out = fastattn.flash_attn_func(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), dropout_p=dropout,
                softmax_scale=scaling, causal=causal,
                window_size=(-1, -1) if window is None else (window - 1, 0), softcap=softcap,
            )
            return out, None
        return _softcapped_masked_attention(query, key, value, mask, dropout, scaling, softcap), None
    out = fastattn.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


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


def register(name: str = ATTN_IMPLEMENTATION) -> str:
    """Register the attention and mask functions under ``name`` (done on import for
    ``"fastattn"``; idempotent). Returns ``name``."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, attention_mask)
    return name


register()
