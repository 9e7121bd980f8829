"""Attention modules whose attention runs through :func:`fastattn.scaled_dot_product_attention`
(or, when the attention weights are asked for, :func:`fastattn.scaled_masked_softmax`).

:class:`MultiheadAttention` is a drop-in for :class:`torch.nn.MultiheadAttention`: it
*is* one (a subclass adding no state), so its constructor, parameter names and
``state_dict`` are torch's by construction, a state_dict saved from one loads into the
other, and :func:`fastattn.patch` turns an existing torch module into one in place by
changing its class. Only ``forward`` differs: it reproduces the math of
:func:`torch.nn.functional.multi_head_attention_forward` (mask canonicalisation and
merging, ``add_bias_kv``, ``add_zero_attn``, the ``is_causal`` hint, ``need_weights``)
and computes the attention itself with fastattn.

:class:`CausalSelfAttention` is a compact module for new decoder models, with
grouped-query attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastattn

__all__ = ["MultiheadAttention", "CausalSelfAttention"]


def _float_mask(mask: Optional[Tensor], name: str, dtype: torch.dtype) -> Optional[Tensor]:
    """torch MHA's mask convention to an additive mask: a bool ``True`` means "may not
    attend" and becomes ``-inf``; a float mask is added to the scores as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported, got {mask.dtype}")
    return mask


def _pad_key(mask: Optional[Tensor]) -> Optional[Tensor]:
    """One more key column that every query may attend (``add_bias_kv``/``add_zero_attn``)."""
    if mask is None:
        return None
    return torch.cat([mask, mask.new_zeros(*mask.shape[:-1], 1)], dim=-1)


class MultiheadAttention(nn.MultiheadAttention):
    """:class:`torch.nn.MultiheadAttention` with its attention computed by fastattn.

    Constructor, parameters (``in_proj_weight``/``in_proj_bias`` or
    ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``, ``bias_k``/``bias_v``,
    ``out_proj``), ``state_dict`` and the ``forward`` signature and return values are
    torch's (see its documentation): ``batch_first`` both ways, unbatched 2-D inputs,
    ``key_padding_mask`` ``(N, S)`` and ``attn_mask`` ``(L, S)`` or ``(N * num_heads, L, S)``,
    bool (``True`` = may not attend) or float (added), ``is_causal`` as a hint that
    ``attn_mask`` is causal, ``kdim``/``vdim``, ``add_bias_kv``, ``add_zero_attn`` and
    attention dropout in training mode.

    Served by fastattn: every call on regular tensors. With ``need_weights=False`` (what
    :class:`torch.nn.TransformerEncoderLayer`/``DecoderLayer`` pass) the attention is one
    :func:`fastattn.scaled_dot_product_attention` call and no ``(L, S)`` matrix is stored.
    With ``need_weights=True`` (torch's default) the weights must be materialised: the
    scores ``(q / sqrt(head_dim)) @ k^T`` go through :func:`fastattn.scaled_masked_softmax`
    (the masks applied inside it, broadcast, never expanded per head), then dropout in
    training mode, and the output is ``weights @ v``; the weights returned are the
    post-dropout ones that produced the output (as torch's), averaged over heads with
    ``average_attn_weights=True`` (``(N, L, S)``) else per head (``(N, num_heads, L, S)``),
    differentiable. Only nested-tensor inputs are handed to torch.

    Differences from torch, both deliberate: a query row for which every key is masked
    gets all-zero weights (fastattn's softmax rule) and an output of ``out_proj`` applied
    to zeros, where torch's ``need_weights=True`` path gives NaN; and this module never
    takes torch's fused inference fast path, so the fastattn kernels really run in eval
    mode too (the outputs are the same up to rounding).
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Returns ``(attn_output, attn_weights)`` exactly as :class:`torch.nn.MultiheadAttention`:
        ``attn_output`` ``(L, E)`` unbatched, ``(L, N, E)`` or ``(N, L, E)`` with ``batch_first``;
        ``attn_weights`` is ``None`` unless ``need_weights=True``, then ``(N, L, S)`` averaged
        over heads or ``(N, num_heads, L, S)`` (no ``N`` unbatched), ``S`` counting the key
        appended by ``add_bias_kv``/``add_zero_attn``."""
        if query.is_nested or key.is_nested or value.is_nested:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        heads = _mha_heads(self, query, key, value, key_padding_mask, attn_mask, is_causal, need_weights)
        dropout_p = self.dropout if self.training else 0.0
        if not need_weights:
            return _out_projection(self, _attend(heads, dropout_p), heads), None
        out, weights = _attend_with_weights(heads, dropout_p)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not heads.batched:
            weights = weights.squeeze(0)
        return _out_projection(self, out, heads), weights


@dataclass
class _Heads:
    """MHA inputs after projection, head split, ``add_bias_kv``/``add_zero_attn`` and mask merging."""

    q: Tensor  # (N, H, L, D)
    k: Tensor  # (N, H, S, D), S counting appended keys
    v: Tensor  # (N, H, S, D)
    mask: Optional[Tensor]  # broadcastable to (N, H, L, S): bool True = may not attend (torch MHA's), or float added
    is_causal: bool  # the mask is top-left causal and was dropped (the hint is trusted)
    batched: bool
    batch_first: bool


def _check_shapes(query: Tensor, key: Tensor, value: Tensor, key_padding_mask, attn_mask, num_heads: int) -> bool:
    """torch's shape rules for MHA inputs; returns whether the inputs are batched."""
    if query.dim() not in (2, 3):
        raise AssertionError(f"query should be unbatched 2D or batched 3D tensor but received {query.dim()}-D "
                             f"query tensor")
    batched = query.dim() == 3
    kind, kv_dims, padding_dims = ("batched (3-D)", 3, 2) if batched else ("unbatched (2-D)", 2, 1)
    if key.dim() != kv_dims or value.dim() != kv_dims:
        raise AssertionError(f"For {kind} `query`, expected `key` and `value` to be {kv_dims}-D but found "
                             f"{key.dim()}-D and {value.dim()}-D tensors respectively")
    if key_padding_mask is not None and key_padding_mask.dim() != padding_dims:
        raise AssertionError(f"For {kind} `query`, expected `key_padding_mask` to be `None` or {padding_dims}-D but "
                             f"found {key_padding_mask.dim()}-D tensor instead")
    if not batched and attn_mask is not None and attn_mask.dim() == 3 and attn_mask.shape[0] != num_heads:
        raise AssertionError(f"Expected `attn_mask` shape to be {(num_heads, query.shape[0], key.shape[0])} "
                             f"but got {tuple(attn_mask.shape)}")
    if attn_mask is not None and attn_mask.dim() not in (2, 3):
        raise AssertionError(f"Expected `attn_mask` to be `None`, 2-D or 3-D but found {attn_mask.dim()}-D tensor")
    return batched


def _canonical_masks(attn_mask, key_padding_mask, is_causal: bool, dtype: torch.dtype, trust_hint: bool):
    """torch's mask rules: dtype checks, the ``is_causal`` hint, bool/float unification.

    Returns ``(attn_mask, key_padding_mask, is_causal)``: ``is_causal`` stays True only when
    the hint replaces ``attn_mask`` (then ``None``), which needs no padding mask and
    ``trust_hint``. Bool masks stay bool (OR-ed later: the same result as torch's sum of
    ``-inf`` masks, and a 1-byte mask to read); once either is a float, both become
    additive as torch merges them.
    """
    for name, given in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if given is not None and given.dtype != torch.bool and not torch.is_floating_point(given):
            raise AssertionError(f"only bool and floating types of {name} are supported, got {given.dtype}")
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                           "method `generate_square_subsequent_mask` to create this mask.")
    if is_causal and key_padding_mask is None and trust_hint:
        attn_mask = None  # as torch does: the hint replaces the mask (a causal kernel, no mask read)
    else:
        is_causal = False  # a merged mask is no longer purely causal
    if any(x is not None and x.dtype != torch.bool for x in (attn_mask, key_padding_mask)):
        attn_mask = _float_mask(attn_mask, "attn_mask", dtype)
        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", dtype)
    return attn_mask, key_padding_mask, is_causal


def _in_projection(m: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, self_attention: bool):
    """``q, k, v`` ``(N, L|S, E)``: one GEMM for self-attention with a packed weight, as torch does."""
    bias = m.in_proj_bias
    b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
    if m._qkv_same_embed_dim:
        if self_attention:
            return F.linear(query, m.in_proj_weight, bias).chunk(3, dim=-1)
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
    return F.linear(query, m.q_proj_weight, b_q), F.linear(key, m.k_proj_weight, b_k), \
        F.linear(value, m.v_proj_weight, b_v)


def _merge_masks(attn_mask, key_padding_mask, batch: int, heads: int, tgt_len: int, src_len: int):
    """One mask broadcastable to ``(N, H, L, S)`` in torch MHA's convention, as torch merges
    them; never expanded over the heads (or the batch) it does not depend on."""
    mask = None
    if attn_mask is not None:
        mask = attn_mask.view(1, 1, tgt_len, src_len) if attn_mask.dim() == 2 \
            else attn_mask.view(batch, heads, tgt_len, src_len)
    if key_padding_mask is not None:
        kpm = key_padding_mask.view(batch, 1, 1, src_len)
        mask = kpm if mask is None else (mask | kpm if kpm.dtype == torch.bool else mask + kpm)
    return mask


def _mha_heads(m: nn.MultiheadAttention, query, key, value, key_padding_mask, attn_mask, is_causal: bool,
               need_weights: bool) -> _Heads:
    """torch's ``multi_head_attention_forward`` up to the attention itself, in batch-first layout."""
    batched = _check_shapes(query, key, value, key_padding_mask, attn_mask, m.num_heads)
    self_attention = query is key and key is value
    if not batched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif not m.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    batch, tgt_len, embed_dim = query.shape
    heads, head_dim = m.num_heads, m.head_dim
    if embed_dim != m.embed_dim:
        raise AssertionError(f"was expecting embedding dimension of {m.embed_dim}, but got {embed_dim}")
    if key.shape[:2] != value.shape[:2]:
        raise AssertionError(f"key's sequence and batch dims {tuple(key.shape[:2])} do not match value's "
                             f"{tuple(value.shape[:2])}")
    appends_keys = (m.bias_k is not None and m.bias_v is not None) or m.add_zero_attn
    # torch's need_weights=True path reads attn_mask even with the hint; trusting the hint
    # gives the same weights unless a key is appended (the mask then lets every query see
    # it, a causal rule would not): only there is the mask kept.
    attn_mask, key_padding_mask, is_causal = _canonical_masks(
        attn_mask, key_padding_mask, is_causal, query.dtype, trust_hint=not (need_weights and appends_keys))

    q, k, v = _in_projection(m, query, key, value, self_attention)
    src_len = k.shape[1]
    if attn_mask is not None:
        if attn_mask.dim() == 2 and tuple(attn_mask.shape) != (tgt_len, src_len):
            raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, but should be "
                               f"{(tgt_len, src_len)}.")
        if attn_mask.dim() == 3 and tuple(attn_mask.shape) != (batch * heads, tgt_len, src_len):
            raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, but should be "
                               f"{(batch * heads, tgt_len, src_len)}.")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (batch, src_len):
        raise AssertionError(f"expecting key_padding_mask shape of {(batch, src_len)}, but got "
                             f"{tuple(key_padding_mask.shape)}")

    if m.bias_k is not None and m.bias_v is not None:  # add_bias_kv: one learned key/value appended
        k = torch.cat([k, m.bias_k.expand(batch, 1, embed_dim)], dim=1)
        v = torch.cat([v, m.bias_v.expand(batch, 1, embed_dim)], dim=1)
        attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)

    q = q.view(batch, tgt_len, heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, k.shape[1], heads, head_dim).transpose(1, 2)
    v = v.reshape(batch, v.shape[1], heads, head_dim).transpose(1, 2)
    if m.add_zero_attn:  # a zero key/value appended after the head split
        zeros = torch.zeros(batch, heads, 1, head_dim, dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
        attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
    mask = _merge_masks(attn_mask, key_padding_mask, batch, heads, tgt_len, k.shape[2])
    return _Heads(q, k, v, mask, is_causal, batched, m.batch_first)


def _attend(h: _Heads, dropout_p: float) -> Tensor:
    """``(N, H, L, D)`` by :func:`fastattn.scaled_dot_product_attention`: no weights stored."""
    mask = h.mask
    if mask is not None and mask.dtype == torch.bool:
        mask = ~mask  # torch MHA's True = "may not attend"; SDPA's True = "takes part"
    return fastattn.scaled_dot_product_attention(h.q, h.k, h.v, attn_mask=mask, dropout_p=dropout_p,
                                                 is_causal=h.is_causal)


def _attend_with_weights(h: _Heads, dropout_p: float) -> tuple[Tensor, Tensor]:
    """``(out (N, H, L, D), weights (N, H, L, S))`` with the weights explicit, by
    :func:`fastattn.scaled_masked_softmax`: torch's ``need_weights=True`` math, the weights
    after dropout (those returned are those used)."""
    # q is scaled before the product, as torch does: the same rounding as torch's scores,
    # and scores a sqrt(head_dim) smaller in fp16 (further from overflow).
    scores = torch.matmul(h.q * math.sqrt(1.0 / float(h.q.shape[-1])), h.k.transpose(-2, -1))
    mask = h.mask
    if mask is not None and mask.requires_grad:
        # The op does not differentiate its mask: a float mask being trained is added here,
        # where autograd sees it (torch's mask gets a gradient too).
        scores, mask = scores + mask, None
    # The softmax's bool convention (True = masked out, Megatron's) is torch MHA's: no inversion.
    weights = fastattn.scaled_masked_softmax(scores, mask, 1.0, causal=h.is_causal)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, h.v), weights


def _out_projection(m: nn.MultiheadAttention, out: Tensor, h: _Heads) -> Tensor:
    """``(N, H, L, D)`` heads to torch's output layout after ``out_proj``."""
    batch, _, tgt_len, _ = out.shape
    out = F.linear(out.transpose(1, 2).reshape(batch, tgt_len, m.embed_dim), m.out_proj.weight, m.out_proj.bias)
    if not h.batched:
        return out.squeeze(0)
    return out if h.batch_first else out.transpose(0, 1)


class CausalSelfAttention(nn.Module):
    """Causal (decoder) self-attention with grouped-query attention, for new models.

    Args:
        embed_dim: model width ``E``; ``num_heads`` must divide it (head dim ``E / num_heads``).
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA/MQA); must divide ``num_heads``. Default ``num_heads``.
        bias: biases on the projections.
        dropout: attention-weight dropout probability, applied in training mode only.

    Parameters: ``qkv_proj`` (``nn.Linear(E, (num_heads + 2 * num_kv_heads) * head_dim)``, the
    query rows first, then key, then value: one GEMM for all three) and ``out_proj``
    (``nn.Linear(E, E)``).

    ``forward(x, key_padding_mask=None)``: ``x`` ``(N, L, E)``; ``key_padding_mask`` optional
    bool ``(N, L)`` with ``True`` marking padding (torch's convention). Returns ``(N, L, E)``.
    Position ``i`` attends to the non-padding positions ``j <= i``; a query row that sees no
    key (a leading pad) outputs the projection of zeros.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None, bias: bool = True,
                 dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        factory = {"device": device, "dtype": dtype}
        self.qkv_proj = nn.Linear(embed_dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must be (batch, seq, {self.embed_dim}), got {tuple(x.shape)}")
        batch, seq, _ = x.shape
        hq, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).split((hq * d, hk * d, hk * d), dim=-1)
        q = q.view(batch, seq, hq, d).transpose(1, 2)
        k = k.view(batch, seq, hk, d).transpose(1, 2)
        v = v.view(batch, seq, hk, d).transpose(1, 2)
        mask, causal = None, True
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (batch, seq):
                raise ValueError(f"key_padding_mask must be a bool ({batch}, {seq}) tensor (True = padding), got "
                                 f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
            # SDPA's bool convention is the opposite (True = takes part): causal AND not padding.
            visible = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
            mask = visible & ~key_padding_mask[:, None, None, :]
            causal = False
        out = fastattn.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal,
            enable_gqa=hq != hk,
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq, self.embed_dim))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"dropout={self.dropout}")
