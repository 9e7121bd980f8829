"""The ``cpu`` backend's gated activations: the native kernels of ``csrc/cpu/activations.cpp``
(fastattn._C) behind the core ops ``gated_act_fwd`` / ``gated_act_bwd``.

The kernels see each tensor as ``rows`` rows of ``cols = shape[-1]`` contiguous elements
with one row stride, so any tensor whose leading dims flatten without a copy (contiguous,
row-sliced, a column slice of a wider buffer, broadcast rows of stride 0 for inputs) is
taken as it is. Covered: CPU tensors of fp32, fp16, bf16 (computed in fp32). Anything
else (float64, a last dim with stride != 1, leading dims that do not flatten) makes
``supports`` return the reason, and ``auto`` falls back to the reference backend.
Arguments were validated by the public op; here is only pointer and stride plumbing.
"""
from __future__ import annotations

from typing import Optional

import torch

from fastattn import _C
from fastattn._dtype_codes import ACTIVATION_CODES, DTYPE_CODES


def rows_view(t: torch.Tensor) -> Optional[tuple[int, int, int]]:
    """``(rows, cols, row_stride)`` in elements when ``t`` is rows of contiguous elements
    with a uniform row stride (leading dims flattened), else ``None``."""
    if t.dim() == 0:
        return None
    cols = t.shape[-1]
    if cols > 1 and t.stride(-1) != 1:
        return None
    try:
        flat = t.view(-1, cols) if t.numel() else t.reshape(-1, cols)
    except RuntimeError:  # leading dims not flattenable without a copy
        return None
    row_stride = flat.stride(0) if flat.shape[0] > 1 else cols
    return flat.shape[0], cols, row_stride


def available(device: torch.device) -> Optional[str]:
    """``None`` if the native CPU kernels can run on ``device``, else why not."""
    if device.type != "cpu":
        return f"the native CPU kernels take CPU tensors, not {device.type}"
    return None


def supports(*tensors_and_activation) -> Optional[str]:
    """``None`` when the native kernel takes these core-op arguments as they are, else why not.

    Takes ``(gate, up, activation)`` or ``(dout, gate, up, activation)``.
    """
    *tensors, activation = tensors_and_activation
    if activation not in ACTIVATION_CODES:
        return f"activation {activation!r} (the CPU kernel has {sorted(ACTIVATION_CODES)})"
    first = tensors[0]
    for t in tensors:
        if not t.is_cpu:
            return "the native CPU kernels take CPU tensors"
        if t.dtype not in DTYPE_CODES or t.dtype != first.dtype:
            return f"dtype {t.dtype} (the CPU kernel takes fp32, fp16 or bf16, all alike)"
        if t.shape != first.shape:
            return "tensors of different shapes"
        if not t.is_contiguous() and rows_view(t) is None:  # contiguous: rows by construction
            return "a layout that is not rows of contiguous elements with one row stride"
    return None


def _rows_strides(*tensors: torch.Tensor) -> tuple[int, int, list[int]]:
    """``(rows, cols, [row stride of each])`` of same-shaped tensors ``supports`` accepted."""
    first = tensors[0]
    cols = first.shape[-1]
    if all(t.is_contiguous() for t in tensors):  # the common case, read off the shape
        return first.numel() // cols, cols, [cols] * len(tensors)
    views = [rows_view(t) for t in tensors]
    return views[0][0], cols, [v[2] for v in views]


def gated_act_fwd(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(gate) * up`` (shapes ``(..., n)``, equal; fp32/fp16/bf16, computed in fp32)
    with ``activation`` "swiglu" | "geglu" | "geglu_tanh". Returns a new contiguous tensor."""
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if out.numel() == 0:
        return out
    rows, cols, (sg, su) = _rows_strides(gate, up)
    _C.gated_act_fwd({"gate": gate.data_ptr(), "up": up.data_ptr(), "out": out.data_ptr(), "rows": rows, "cols": cols,
                      "stride_gate": sg, "stride_up": su, "stride_out": cols, "dtype": DTYPE_CODES[gate.dtype],
                      "activation": ACTIVATION_CODES[activation]})
    return out


def gated_act_bwd(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                  activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dgate, dup) = (dout * up * act'(gate), dout * act(gate))``, shapes as ``gate``;
    new contiguous tensors."""
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    if dgate.numel() == 0:
        return dgate, dup
    rows, cols, (sd, sg, su) = _rows_strides(dout, gate, up)
    _C.gated_act_bwd({"dout": dout.data_ptr(), "gate": gate.data_ptr(), "up": up.data_ptr(),
                      "dgate": dgate.data_ptr(), "dup": dup.data_ptr(), "rows": rows, "cols": cols, "stride_dout": sd,
                      "stride_gate": sg, "stride_up": su, "stride_dgate": cols, "stride_dup": cols,
                      "dtype": DTYPE_CODES[gate.dtype], "activation": ACTIVATION_CODES[activation]})
    return dgate, dup


# auto consults the measured crossover table before running this kernel
# (fastattn.backends.cpu.activation_crossover).
gated_act_fwd.torch_crossover = True

OPS = {"gated_act_fwd": (gated_act_fwd, supports), "gated_act_bwd": (gated_act_bwd, supports)}
