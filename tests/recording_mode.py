"""A dispatch mode that records every op run inside it, for the tests that check which route a
call took (a plain eager call skips the custom op's dispatch; a watched one goes through it).
Being inside any dispatch mode is itself what makes fastattn take the op route."""
from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class RecordingMode(TorchDispatchMode):
    """``with RecordingMode() as watched: ...`` then ``watched.ops``: the names of the ops run,
    in order (e.g. ``"fastattn.gated_act_fwd.default"``, ``"aten.mm.default"``)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
