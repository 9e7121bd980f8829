"""When a call may skip torch.library's dispatch of a custom op and run the op's body directly.

A custom op costs each call its dispatch through torch.library: tens of microseconds, and for an
op that mutates an argument (``attention_kvcache`` appends to the caches) more than a hundred,
because torch rebuilds the full argument list of the schema in Python to bump the mutated
tensors' version counters. A decoding step of a small model does a few microseconds of work per
layer, so that overhead decides its speed. The op exists for the tracers (Dynamo, export,
``make_fx``, fake and functional tensors), which must see one opaque node with a fake
implementation; plain eager calls gain nothing from it.
"""
from __future__ import annotations

from typing import Optional

import torch


def runs_eagerly(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether no tracer is watching this call: not under Dynamo or export, no dispatch mode
    active (``make_fx``, fake tensors, functionalization, ``TorchDispatchMode`` users), and every
    given tensor a plain ``torch.Tensor`` (no subclass, e.g. a fake, functional or distributed
    tensor). Then the op's body may run directly, with the same result."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and all(t is None or type(t) is torch.Tensor for t in tensors))
