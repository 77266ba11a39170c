"""Plain-torch definitions of every int8q op: what the kernels must compute.

These run on any device and are what the tests compare the CPU and CUDA kernels against.
The integer product is computed in float64, which is exact for int8 codes at any allowed K.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

SYM_MAX = 127.0
SHIFTED_MIN = -128.0
MAX_K = 131071  # int32 accumulation is exact while K * 128 * 128 < 2**31


def scale_from_absmax(absmax: Tensor) -> Tensor:
    """absmax / 127; zero absmax -> 1 (codes are all 0); non-finite absmax -> NaN."""
    absmax = absmax.float()
    # Divide by a tensor, not a Python scalar: on CUDA torch turns division by a scalar into
    # multiplication by its reciprocal, which is not the IEEE quotient the kernels compute.
    scale = absmax / torch.full_like(absmax, SYM_MAX)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(torch.isfinite(absmax), scale, torch.full_like(scale, float("nan")))


def quantize_codes(x: Tensor, scale: Tensor, lo: float) -> Tensor:
    """round_half_even(x / scale) clamped to [lo, 127]; NaN -> 0. ``x`` is float32."""
    q = torch.round(x / scale).clamp(lo, SYM_MAX)
    return torch.nan_to_num(q, nan=0.0).to(torch.int8)


def quantize_weight(weight: Tensor, per_channel: bool = True) -> Tuple[Tensor, Tensor]:
    w = weight.float()
    if not torch.isfinite(w).all():
        raise ValueError("quantize_weight: weight contains NaN or Inf")
    if per_channel:
        absmax = w.abs().amax(dim=1)
    else:  # an empty weight has absmax 0 (scale 1), as in the kernels
        absmax = w.abs().amax().reshape(1) if w.numel() else w.new_zeros(1)
    scale = scale_from_absmax(absmax)
    return quantize_codes(w, scale[:, None] if per_channel else scale, -SYM_MAX), scale


def _static_scale(scale: Tensor) -> Tensor:
    s = scale.float().reshape(1)
    ok = (s > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.full_like(s, float("nan")))


def _quantize_rows(
    x: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], x_smooth: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Codes and the per-row scale that dequantizes them (NaN for rows with NaN/Inf).

    With ``x_smooth`` the rows quantized are ``x.float() * x_smooth`` (one float32 multiply
    per element, which may overflow to Inf: that row is then NaN like any other).
    """
    xf = x.float()
    if x_smooth is not None:
        xf = xf * x_smooth.to(xf.device, torch.float32)
    finite = torch.isfinite(xf).all(dim=-1)
    if scale is None:
        # amax propagates NaN and Inf, which scale_from_absmax turns into a NaN row scale.
        row_scale = scale_from_absmax(xf.abs().amax(dim=-1))
        codes = quantize_codes(xf, row_scale[..., None], -SYM_MAX)
        return codes, row_scale
    s = _static_scale(scale.to(xf.device))
    if shift is None:
        codes = quantize_codes(xf, s, -SYM_MAX)
    else:
        codes = quantize_codes(xf - shift.to(xf.device).float().reshape(1), s, SHIFTED_MIN)
    row_scale = torch.where(finite, s.reshape(()), torch.full_like(finite, float("nan"), dtype=torch.float32))
    return codes, row_scale


def quantize_activation(
    x: Tensor, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None, x_smooth: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    codes, row_scale = _quantize_rows(x, scale, shift, x_smooth)
    if scale is None:
        return codes, row_scale
    return codes, scale.to(x.device).float().reshape(1).clone()


def int_matmul(xq: Tensor, qweight: Tensor) -> Tensor:
    """Exact integer product ``xq @ qweight.T`` as float64 (exact for |values| < 2**53)."""
    k = xq.shape[-1]
    return xq.reshape(-1, k).double() @ qweight.double().t()


def _dequantize(
    acc: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    shift: Optional[Tensor],
    qweight: Tensor,
    bias: Optional[Tensor],
    w_sum: Optional[Tensor] = None,
) -> Tensor:
    # Same float32 operation order as the kernels: (acc * xs) * ws, + shift term, + bias.
    out = acc.float() * x_scale.float().reshape(-1, 1) * w_scale.float().reshape(1, -1)
    if shift is not None:
        # The op uses w_sum as given (it is not checked against qweight).
        w_sum = (qweight.to(torch.int64).sum(dim=1) if w_sum is None else w_sum.to(acc.device)).float()
        out = out + shift.to(out.device).float().reshape(1) * w_scale.float().reshape(1, -1) * w_sum
    if bias is not None:
        out = out + bias.float()
    return out


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
    codes, row_scale = _quantize_rows(x, x_scale, x_shift, x_smooth)
    out = _dequantize(int_matmul(codes, qweight), row_scale, w_scale, x_shift, qweight, bias, w_sum)
    return out.to(x.dtype).reshape(*x.shape[:-1], qweight.shape[0])


def scaled_mm(
    xq: Tensor,
    qweight: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    bias: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    out = _dequantize(int_matmul(xq, qweight), x_scale, w_scale, None, qweight, bias)
    dtype = out_dtype if out_dtype is not None else torch.float32
    return out.to(dtype).reshape(*xq.shape[:-1], qweight.shape[0])
