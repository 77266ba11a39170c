"""Typed wrappers over ``torch.ops.int8q.*`` and the fake kernels torch.compile traces with.

Every op is defined once in ``csrc/torch_bindings.cpp``; the plain-torch definition of what
each computes is in :mod:`int8q.reference`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["quantize_weight", "quantize_activation", "matmul", "scaled_mm"]


def quantize_weight(weight: Tensor, per_channel: bool = True) -> Tuple[Tensor, Tensor]:
    """Quantize an ``[N, K]`` float weight to int8 codes and float32 scales.

    Returns ``(qweight [N, K] int8, w_scale [N] or [1] float32)`` with
    ``scale = absmax / 127`` and ``q = round_half_even(w / scale)`` in ``[-127, 127]``.
    """
    return torch.ops.int8q.quantize_weight.default(weight, per_channel)


def quantize_activation(
    x: Tensor,
    scale: Optional[Tensor] = None,
    shift: Optional[Tensor] = None,
    x_smooth: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Quantize ``[..., K]`` activations: dynamic per row (``scale=None``) or static per tensor.

    ``x_smooth`` (float32 ``[K]``, on x's device): quantize ``x * x_smooth`` instead, the
    multiply done in the same pass (SmoothQuant's ``1/s`` where no fold exists).
    Returns ``(xq, x_scale)``: ``x_scale`` has shape ``x.shape[:-1]`` (dynamic) or ``[1]``.
    """
    return torch.ops.int8q.quantize_activation.default(x, scale, shift, x_smooth)


def matmul(
    x: Tensor,
    qweight: Tensor,
    w_scale: Tensor,
    x_scale: Optional[Tensor] = None,
    x_shift: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    x_smooth: Optional[Tensor] = None,
    w_sum: Optional[Tensor] = None,
) -> Tensor:
    """The W8A8 linear layer: quantize ``x``, int8 GEMM with int32 accumulation, dequantize.

    ``x_smooth`` (float32 ``[K]``): quantize ``x * x_smooth`` per input channel instead of
    ``x`` (see :func:`quantize_activation`). ``w_sum`` (int32 ``[N]``, with ``x_shift``
    only): ``qweight.sum(1, dtype=torch.int32)``, computed once by the caller instead of by
    a pass over the weights on every call; it is used as given. Returns ``[..., N]`` in
    ``x.dtype``.
    """
    return torch.ops.int8q.matmul.default(x, qweight, w_scale, x_scale, x_shift, bias, x_smooth, w_sum)


def scaled_mm(
    xq: Tensor,
    qweight: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    bias: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``(xq @ qweight.T) * x_scale * w_scale + bias`` for int8 activations; float32 by default."""
    return torch.ops.int8q.scaled_mm.default(xq, qweight, x_scale, w_scale, bias, out_dtype)


# Fake kernels: shapes and dtypes only, so torch.compile and export trace the ops. They also
# run for real tensors when one argument is on the meta device, so they repeat the device
# check of csrc/checks.h: a mix must fail, not return an uninitialized tensor.


def _check_same_device(op: str, name: str, t: Optional[Tensor], ref: Tensor, ref_name: str) -> None:
    if t is None:
        return
    torch._check(
        t.device == ref.device,
        lambda: f"int8q.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
        "all tensors must be on one device",
    )


@torch.library.register_fake("int8q::quantize_weight")
def _quantize_weight_fake(weight: Tensor, per_channel: bool = True) -> Tuple[Tensor, Tensor]:
    n = weight.shape[0]
    qweight = weight.new_empty(weight.shape, dtype=torch.int8)
    w_scale = weight.new_empty((n if per_channel else 1,), dtype=torch.float32)
    return qweight, w_scale


def _check_smooth(op: str, x_smooth: Optional[Tensor], x: Tensor) -> None:
    if x_smooth is None:
        return
    _check_same_device(op, "x_smooth", x_smooth, x, "x")
    torch._check(
        x_smooth.dim() == 1 and x_smooth.shape[0] == x.shape[-1],
        lambda: f"int8q.{op}: x_smooth must have shape [K] = [{x.shape[-1]}], got {list(x_smooth.shape)}",
    )


@torch.library.register_fake("int8q::quantize_activation")
def _quantize_activation_fake(
    x: Tensor,
    scale: Optional[Tensor] = None,
    shift: Optional[Tensor] = None,
    x_smooth: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    _check_smooth("quantize_activation", x_smooth, x)
    xq = x.new_empty(x.shape, dtype=torch.int8)
    scale_shape = x.shape[:-1] if scale is None else (1,)
    return xq, x.new_empty(scale_shape, dtype=torch.float32)


@torch.library.register_fake("int8q::matmul")
def _matmul_fake(
    x: Tensor,
    qweight: Tensor,
    w_scale: Tensor,
    x_scale: Optional[Tensor] = None,
    x_shift: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    x_smooth: Optional[Tensor] = None,
    w_sum: Optional[Tensor] = None,
) -> Tensor:
    _check_same_device("matmul", "qweight", qweight, x, "x")
    _check_same_device("matmul", "w_scale", w_scale, qweight, "qweight")
    _check_same_device("matmul", "bias", bias, qweight, "qweight")
    _check_same_device("matmul", "w_sum", w_sum, qweight, "qweight")
    torch._check(x.shape[-1] == qweight.shape[1])
    _check_smooth("matmul", x_smooth, x)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.register_fake("int8q::scaled_mm")
def _scaled_mm_fake(
    xq: Tensor,
    qweight: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    bias: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    _check_same_device("scaled_mm", "qweight", qweight, xq, "xq")
    _check_same_device("scaled_mm", "x_scale", x_scale, xq, "xq")
    _check_same_device("scaled_mm", "w_scale", w_scale, qweight, "qweight")
    _check_same_device("scaled_mm", "bias", bias, qweight, "qweight")
    torch._check(xq.shape[-1] == qweight.shape[1])
    dtype = out_dtype if out_dtype is not None else torch.float32
    return xq.new_empty((*xq.shape[:-1], qweight.shape[0]), dtype=dtype)
