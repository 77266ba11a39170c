"""QuantLinear: a drop-in W8A8 replacement for nn.Linear."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["QuantLinear"]

_ACT_MODES = ("dynamic", "static")


def _as_scalar_tensor(value: Union[float, Tensor], name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).detach().reshape(-1)
    if t.numel() != 1:
        raise ValueError(f"QuantLinear: {name} must be a single value, got {t.numel()} elements")
    return t.clone()


def finite_and_positive(t: Tensor) -> bool:
    """Whether every element of t is finite and > 0: what a static activation scale and the
    SmoothQuant multipliers must be, checked here and when a checkpoint is loaded."""
    return bool(torch.isfinite(t).all() and (t > 0).all())


def _check_smooth(smooth: Tensor, in_features: int, where: str) -> Tensor:
    t = torch.as_tensor(smooth).detach().to(torch.float32)
    if t.shape != (in_features,):
        raise ValueError(f"{where}: smooth must have shape [in_features] = [{in_features}], got {list(t.shape)}")
    if not finite_and_positive(t):
        raise ValueError(f"{where}: smooth must be finite and positive (SmoothQuant's 1/s per input channel)")
    return t


# Buffers the ops require in float32, whatever dtype the model is cast to.
_FLOAT32_BUFFERS = ("w_scale", "act_scale", "act_shift", "smooth")


class QuantLinear(nn.Module):
    """``y = x @ W.T + b`` with int8 weights and int8 activations.

    Args:
        in_features, out_features, bias: as for :class:`torch.nn.Linear`.
        act: ``"dynamic"`` quantizes each row of ``x`` with its own scale at run time;
            ``"static"`` uses the calibrated per-tensor ``act_scale`` (and ``act_shift``).
        per_channel: one weight scale per output channel (``True``) or per tensor.
        shifted: static mode only; also hold an ``act_shift`` for activations whose range is
            not centred on zero (``q = round((x - shift) / scale)``).
        smoothed: also hold ``smooth``, SmoothQuant's per-input-channel ``1/s``: the
            activations quantized are ``x * smooth``, multiplied inside the quantization
            kernel (no extra pass), and ``qweight`` holds the weight columns times ``s``.
            For layers whose ``1/s`` cannot be folded into the op that produces ``x``.
        device, dtype: where the buffers live and the dtype of ``bias``.

    Buffers: ``qweight`` int8 ``[out, in]``, ``w_scale`` float32 ``[out]`` or ``[1]``,
    ``bias``, for static activations ``act_scale`` (and ``act_shift``) float32 ``[1]``, and
    when smoothed ``smooth`` float32 ``[in]``. When shifted, also ``w_sum`` int32 ``[out]``,
    the row sums of ``qweight`` that the shift term needs: kept so that a call does not sum
    the weights again, left out of the state dict and recomputed by :meth:`from_linear` and
    ``load_state_dict``. Code that writes ``qweight`` any other way must call
    :meth:`update_weight_sums` afterwards.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        act: str = "dynamic",
        per_channel: bool = True,
        shifted: bool = False,
        smoothed: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if act not in _ACT_MODES:
            raise ValueError(f"QuantLinear: act must be one of {_ACT_MODES}, got {act!r}")
        if shifted and act != "static":
            raise ValueError("QuantLinear: shifted=True needs act='static' (dynamic quantization is symmetric)")
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"QuantLinear: in_features and out_features must be positive, got {in_features} and {out_features}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.act = act
        self.per_channel = per_channel
        self.shifted = shifted
        self.smoothed = smoothed
        fdtype = dtype if dtype is not None else torch.get_default_dtype()
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer(
            "w_scale", torch.ones(out_features if per_channel else 1, dtype=torch.float32, device=device)
        )
        self.register_buffer("bias", torch.zeros(out_features, dtype=fdtype, device=device) if bias else None)
        if act == "static":
            self.register_buffer("act_scale", torch.ones(1, dtype=torch.float32, device=device))
        else:
            self.act_scale = None
        if shifted:
            self.register_buffer("act_shift", torch.zeros(1, dtype=torch.float32, device=device))
            self.register_buffer(
                "w_sum", torch.zeros(out_features, dtype=torch.int32, device=device), persistent=False
            )
        else:
            self.act_shift = None
            self.w_sum = None
        if smoothed:
            self.register_buffer("smooth", torch.ones(in_features, dtype=torch.float32, device=device))
        else:
            self.smooth = None

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        act: str = "dynamic",
        act_scale: Optional[Union[float, Tensor]] = None,
        act_shift: Optional[Union[float, Tensor]] = None,
        per_channel: bool = True,
        smooth: Optional[Tensor] = None,
    ) -> "QuantLinear":
        """Quantize an existing :class:`torch.nn.Linear` (its weights are not modified).

        Args:
            smooth: SmoothQuant's per-input-channel multipliers ``1/s`` (``[in_features]``,
                finite and positive), applied to the activations at run time. The layer
                quantizes ``linear.weight`` with each column ``j`` divided by ``smooth[j]``
                (that is, times ``s_j``), so it computes the same function as ``linear``;
                pass the unsmoothed weights. ``act_scale`` and ``act_shift`` describe the
                smoothed activations ``x * smooth``
                (:meth:`int8q.ActivationStats.smoothed` gives their statistics).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_linear expects an nn.Linear, got {type(linear).__name__}")
        if act == "static" and act_scale is None:
            raise ValueError("QuantLinear.from_linear: act='static' needs act_scale (from calibration)")
        if act == "dynamic" and (act_scale is not None or act_shift is not None):
            raise ValueError("QuantLinear.from_linear: act_scale/act_shift are for act='static' only")
        weight = linear.weight.detach()
        if smooth is not None:
            smooth = _check_smooth(smooth, linear.in_features, "QuantLinear.from_linear").to(weight.device)
            weight = weight.float() / smooth
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            act=act,
            per_channel=per_channel,
            shifted=act_shift is not None,
            smoothed=smooth is not None,
            device=weight.device,
            dtype=linear.bias.dtype if linear.bias is not None else linear.weight.dtype,
        )
        if smooth is not None:
            layer.smooth.copy_(smooth)
        qweight, w_scale = torch.ops.int8q.quantize_weight(weight, per_channel)
        layer.qweight.copy_(qweight)
        layer.update_weight_sums()
        layer.w_scale.copy_(w_scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        if act_scale is not None:
            layer.set_act_params(act_scale, act_shift)
        return layer

    def set_act_params(self, act_scale: Union[float, Tensor], act_shift: Optional[Union[float, Tensor]] = None) -> None:
        """Set the static activation scale (and shift); checked here, once, not per call."""
        if self.act != "static":
            raise ValueError("QuantLinear.set_act_params: this layer uses dynamic activations")
        if (act_shift is not None) != self.shifted:
            raise ValueError(
                f"QuantLinear.set_act_params: this layer was built with shifted={self.shifted}; "
                f"act_shift must be {'given' if self.shifted else 'None'}"
            )
        scale = _as_scalar_tensor(act_scale, "act_scale")
        if not finite_and_positive(scale):
            raise ValueError(f"QuantLinear: act_scale must be finite and positive, got {scale.item()}")
        self.act_scale.copy_(scale)
        if act_shift is not None:
            shift = _as_scalar_tensor(act_shift, "act_shift")
            if not torch.isfinite(shift).all():
                raise ValueError(f"QuantLinear: act_shift must be finite, got {shift.item()}")
            self.act_shift.copy_(shift)

    @torch.no_grad()
    def update_weight_sums(self) -> None:
        """Recompute ``w_sum`` from ``qweight`` (shifted layers; a no-op otherwise)."""
        if self.w_sum is None:
            return
        sums = self.qweight.sum(dim=1, dtype=torch.int32)
        if self.w_sum.shape == sums.shape and self.w_sum.device == sums.device:
            self.w_sum.copy_(sums)  # in place: a captured CUDA graph keeps reading this buffer
        else:
            self.w_sum = sums

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.update_weight_sums()

    def _apply(self, fn, recurse=True):
        # model.half() / .to(torch.bfloat16) casts every floating buffer; the scales and the
        # smoothing multipliers are float32 by contract, so they are cast back (bias follows).
        super()._apply(fn, recurse)
        for name in _FLOAT32_BUFFERS:
            t = self._buffers.get(name)
            if t is not None and t.dtype != torch.float32:
                self._buffers[name] = t.float()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.int8q.matmul(
            x, self.qweight, self.w_scale, self.act_scale, self.act_shift, self.bias, self.smooth, self.w_sum
        )

    def extra_repr(self) -> str:
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"act={self.act}",
            f"per_channel={self.per_channel}",
        ]
        if self.shifted:
            parts.append("shifted=True")
        if self.smoothed:
            parts.append("smoothed=True")
        return ", ".join(parts)
