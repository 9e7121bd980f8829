"""Indexed KV caches (``block_table``, ``cache_batch_idx``, ``cache_leftpad``) for backends that
decode only a contiguous per-sequence cache, and the value checks of every index tensor.

A backend's ``kvcache_fwd`` that addresses these itself sets the attribute
``native_paging = True`` and takes them as keyword arguments (the Triton decode kernel reads
pages through the table in place). Every other backend is given :func:`gather_visible`'s
contiguous copy of each sequence's visible keys instead.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastattn import validation as check


def capacity(k_cache: Tensor, block_table: Optional[Tensor]) -> int:
    """Keys one sequence's cache can hold: its pages (``block_table``) or the cache's rows."""
    return k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]


def check_index_values(lens: Tensor, new: int, k_cache: Tensor, block_table: Optional[Tensor] = None,
                       batch_idx: Optional[Tensor] = None, leftpad: Optional[Tensor] = None) -> None:
    """The values of ``cache_seqlens`` (plus ``new`` appended tokens within the capacity),
    ``cache_leftpad``, ``cache_batch_idx`` and the ``block_table`` entries a sequence uses (the
    pages holding its keys ``0 .. lens[b] + new``; unused entries may hold anything), so that
    no kernel or gather indexes out of range. Reads values on the host: the caller checks
    :func:`fastattn.validation.reads_values_now` first."""
    cap = capacity(k_cache, block_table)
    check.cache_seqlens_values(lens, new, cap)
    if leftpad is not None and bool(((leftpad < 0) | (leftpad > lens + new)).any()):
        raise ValueError(f"cache_leftpad must lie in [0, cache_seqlens + {new}] per sequence, got {leftpad.tolist()}")
    if batch_idx is not None and bool(((batch_idx < 0) | (batch_idx >= k_cache.shape[0])).any()):
        raise ValueError(f"cache_batch_idx must index the cache's {k_cache.shape[0]} rows, got {batch_idx.tolist()}")
    if block_table is not None:
        page = k_cache.shape[1]
        used = (lens.long() + new + page - 1) // page  # pages each sequence touches
        touched = torch.arange(block_table.shape[1], device=lens.device)[None, :] < used[:, None]
        bad = touched & ((block_table < 0) | (block_table >= k_cache.shape[0]))
        if bool(bad.any()):
            raise ValueError(f"block_table entries in use must index the {k_cache.shape[0]} cache blocks, got "
                             f"{block_table[bad].tolist()}")


def gather_visible(k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor], lens: Tensor,
                   leftpad: Optional[Tensor], batch_idx: Optional[Tensor], block_table: Optional[Tensor]):
    """Append ``k``/``v`` through the page table or batch index (in place), then gather each
    sequence's visible keys ``leftpad[b] .. lens[b] + new`` into contiguous ``(B, L, Hk, D)``
    caches (values already checked). Returns ``(k_cache, v_cache, lens)`` for a contiguous
    decode with nothing left to append; ``L`` is the longest visible range the layout allows.
    Costs one copy of every sequence's capacity, which native paging avoids."""
    batch = lens.shape[0]
    device = lens.device
    new = 0 if k is None else k.shape[1]
    cap = capacity(k_cache, block_table)
    if block_table is not None:
        page = k_cache.shape[1]
        table = block_table.long()
        used = (lens.long() + new)[:, None]  # keys held: the table entries past them may hold anything

        def locate(positions):  # (B, n) logical positions -> (block, row) index tensors
            held = positions < used
            slot = torch.where(held, torch.div(positions, page, rounding_mode="floor"), 0)
            # Positions not held read block 0 (in range; k_cache has a block whenever one is held).
            return torch.where(held, torch.gather(table, 1, slot), 0), positions % page
    else:
        rows = torch.arange(batch, device=device) if batch_idx is None else batch_idx.long()

        def locate(positions):
            return rows[:, None].expand_as(positions), positions

    if new:
        where = locate(lens.long()[:, None] + torch.arange(new, device=device)[None, :])
        k_cache.index_put_(where, k)
        v_cache.index_put_(where, v)
    start = torch.zeros_like(lens) if leftpad is None else leftpad
    if k_cache.shape[0] == 0:  # no block at all: nothing is held
        cap = 0
    # Positions past a sequence's visible end are gathered (in range) but lie beyond the length
    # the decode is given, so they are never attended.
    positions = (start.long()[:, None] + torch.arange(cap, device=device)[None, :]).clamp_max(max(cap - 1, 0))
    where = locate(positions)
    return k_cache[where], v_cache[where], (lens + new - start).to(torch.int32)
