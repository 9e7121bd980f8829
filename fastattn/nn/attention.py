"""Attention modules whose attention runs through :func:`fastattn.scaled_dot_product_attention`.

:class:`MultiheadAttention` is a drop-in for :class:`torch.nn.MultiheadAttention`: it
*is* one (a subclass adding no state), so its constructor, parameter names and
``state_dict`` are torch's by construction, a state_dict saved from one loads into the
other, and :func:`fastattn.patch` turns an existing torch module into one in place by
changing its class. Only ``forward`` differs: it reproduces the math of
:func:`torch.nn.functional.multi_head_attention_forward` (mask canonicalisation and
merging, ``add_bias_kv``, ``add_zero_attn``, the ``is_causal`` hint) and computes the
attention itself with fastattn.

:class:`CausalSelfAttention` is a compact module for new decoder models, with
grouped-query attention.
"""
from __future__ import annotations

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

    Served by fastattn: every call with ``need_weights=False`` (what
    :class:`torch.nn.TransformerEncoderLayer`/``DecoderLayer`` pass). Served by torch:
    ``need_weights=True`` (torch's default), because the averaged or per-head attention
    weights must then be materialised, and nested-tensor inputs. Unlike torch's module,
    this one never takes torch's fused inference fast path, so the fastattn kernel really
    runs in eval mode too; the outputs are the same up to rounding.
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
        ``attn_weights`` is ``None`` unless ``need_weights=True``."""
        if need_weights or query.is_nested or key.is_nested or value.is_nested:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return _mha_forward(self, query, key, value, key_padding_mask, attn_mask, is_causal), None


def _check_shapes(query: Tensor, key: Tensor, value: Tensor, key_padding_mask, attn_mask, num_heads: int) -> bool:
    """torch's shape rules for MHA inputs; returns whether the inputs are batched."""
    if query.dim() == 3:
        if key.dim() != 3 or value.dim() != 3:
            raise AssertionError(f"For batched (3-D) `query`, expected `key` and `value` to be 3-D but found "
                                 f"{key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 2:
            raise AssertionError(f"For batched (3-D) `query`, expected `key_padding_mask` to be `None` or 2-D but "
                                 f"found {key_padding_mask.dim()}-D tensor instead")
        batched = True
    elif query.dim() == 2:
        if key.dim() != 2 or value.dim() != 2:
            raise AssertionError(f"For unbatched (2-D) `query`, expected `key` and `value` to be 2-D but found "
                                 f"{key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 1:
            raise AssertionError(f"For unbatched (2-D) `query`, expected `key_padding_mask` to be `None` or 1-D but "
                                 f"found {key_padding_mask.dim()}-D tensor instead")
        if attn_mask is not None and attn_mask.dim() == 3 and attn_mask.shape[0] != num_heads:
            raise AssertionError(f"Expected `attn_mask` shape to be {(num_heads, query.shape[0], key.shape[0])} "
                                 f"but got {tuple(attn_mask.shape)}")
        batched = False
    else:
        raise AssertionError(f"query should be unbatched 2D or batched 3D tensor but received {query.dim()}-D "
                             f"query tensor")
    if attn_mask is not None and attn_mask.dim() not in (2, 3):
        raise AssertionError(f"Expected `attn_mask` to be `None`, 2-D or 3-D but found {attn_mask.dim()}-D tensor")
    return batched


def _mha_forward(m: nn.MultiheadAttention, query, key, value, key_padding_mask, attn_mask, is_causal) -> Tensor:
    """torch's ``multi_head_attention_forward`` with ``need_weights=False``, in batch-first
    layout, the attention itself by :func:`fastattn.scaled_dot_product_attention`."""
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

    for name, given in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if given is not None and given.dtype != torch.bool and not torch.is_floating_point(given):
            raise AssertionError(f"only bool and floating types of {name} are supported, got {given.dtype}")
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                           "method `generate_square_subsequent_mask` to create this mask.")
    if is_causal and key_padding_mask is None:
        # As torch does: without a padding mask the hint replaces the mask (a causal kernel, no mask read).
        attn_mask = None
    elif key_padding_mask is not None:
        is_causal = False  # the merged mask is no longer purely causal
    # Bool masks stay bool (OR-ed: the same result as torch's -inf sum, and no float mask to
    # read); once either is a float, both become additive as torch merges them.
    if any(x is not None and x.dtype != torch.bool for x in (attn_mask, key_padding_mask)):
        attn_mask = _float_mask(attn_mask, "attn_mask", query.dtype)
        key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)

    # In-projection: one GEMM for self-attention with a packed weight, as torch does.
    bias = m.in_proj_bias
    b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
    if m._qkv_same_embed_dim:
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        if self_attention:
            q, k, v = F.linear(query, m.in_proj_weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
    else:
        q = F.linear(query, m.q_proj_weight, b_q)
        k = F.linear(key, m.k_proj_weight, b_k)
        v = F.linear(value, m.v_proj_weight, b_v)

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
    src_len = k.shape[2]

    # Merge into one mask broadcastable to (N, H, L, S), as torch merges them.
    mask = None
    if attn_mask is not None:
        mask = attn_mask.view(1, 1, tgt_len, src_len) if attn_mask.dim() == 2 \
            else attn_mask.view(batch, heads, tgt_len, src_len)
    if key_padding_mask is not None:
        kpm = key_padding_mask.view(batch, 1, 1, src_len)
        mask = kpm if mask is None else (mask | kpm if kpm.dtype == torch.bool else mask + kpm)
    if mask is not None and mask.dtype == torch.bool:
        mask = ~mask  # torch MHA's True = "may not attend"; SDPA's True = "takes part"

    dropout_p = m.dropout if m.training else 0.0
    out = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    out = out.transpose(1, 2).reshape(batch, tgt_len, embed_dim)
    out = F.linear(out, m.out_proj.weight, m.out_proj.bias)
    if not batched:
        return out.squeeze(0)
    return out if m.batch_first else out.transpose(0, 1)


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
