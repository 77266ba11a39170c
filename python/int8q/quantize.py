"""Whole-model quantization: swap every eligible nn.Linear for a QuantLinear, in place."""

from __future__ import annotations

import fnmatch
import re
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .calibration import CALIBRATION_METHODS, ActivationStats, calibrate
from .nn import QuantLinear
from .smooth import linear_smoothing_factors, smooth_model

__all__ = ["quantize_model", "replace_module", "MAX_IN_FEATURES"]

# The kernels accumulate in int32, exact while K * 128 * 128 < 2**31 (csrc/checks.h).
MAX_IN_FEATURES = 131071
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

SkipPattern = Union[str, "re.Pattern[str]"]


def _matches(name: str, pattern: SkipPattern) -> bool:
    """Glob patterns match the full dotted name or any dotted suffix of it ("lm_head" matches
    "model.lm_head"); compiled regular expressions are searched in the full name."""
    if isinstance(pattern, re.Pattern):
        return pattern.search(name) is not None
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[i:]), pattern) for i in range(len(parts)))


def _unsupported_reason(linear: nn.Linear) -> Optional[str]:
    if linear.in_features > MAX_IN_FEATURES:
        return f"in_features {linear.in_features} > {MAX_IN_FEATURES} (int32 accumulation)"
    if linear.weight.dtype not in _KERNEL_DTYPES:
        return f"weight dtype {linear.weight.dtype} (kernels take float32, float16, bfloat16)"
    if linear.weight.device.type == "meta":
        return "weights on the meta device"
    return None


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted path ``name`` inside ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _warn_kept_float(kept: Dict[str, str]) -> None:
    if kept:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in kept.items())
        warnings.warn(f"int8q.quantize_model: {len(kept)} Linear layer(s) stay in float:\n{lines}", stacklevel=3)


def quantize_model(
    model: nn.Module,
    *,
    act: str = "dynamic",
    calib_data: Optional[Iterable[Any]] = None,
    calib_stats: Optional[Mapping[str, ActivationStats]] = None,
    smooth_alpha: Optional[float] = None,
    per_channel: bool = True,
    skip: Union[SkipPattern, Sequence[SkipPattern]] = ("lm_head",),
    method: Optional[str] = None,
    progress: bool = True,
    **calibrate_kwargs: Any,
) -> nn.Module:
    """Replace the model's nn.Linear layers by :class:`int8q.QuantLinear`, in place.

    Args:
        model: any nn.Module (a transformers model, a hand-written one).
        act: ``"dynamic"`` (per-token scales at run time) or ``"static"`` (one calibrated
            scale, and a shift where the range is not centred on zero, per layer).
        calib_data: batches for :func:`int8q.calibrate` (tensors, tuples or dicts of model
            inputs). Needed for ``act="static"`` and for smoothing.
        calib_stats: :func:`int8q.calibrate` output for this float model, instead of
            ``calib_data`` (calibrate once, quantize several copies).
        smooth_alpha: apply SmoothQuant with this alpha (see :mod:`int8q.smooth`) before
            quantizing; None turns it off. ``1/s`` is folded into the preceding norm or
            Linear where the model's structure allows; every other quantized layer applies
            it inside its activation quantization (QuantLinear's ``smooth`` buffer).
        per_channel: one weight scale per output channel (else per tensor).
        skip: layers to keep in float: glob patterns matched against the module name or any
            dotted suffix of it, or compiled regular expressions (one, or a sequence of them).
            Default: the LM head.
        method: calibration clipping method, ``"absmax"`` (default), ``"percentile"`` or
            ``"mse"``; ``calib_stats`` carry the method they were gathered with.
        progress: tqdm progress bar while calibrating.
        **calibrate_kwargs: passed to :func:`int8q.calibrate` (``percentile``, ``sample_size``...).

    Returns:
        ``model``, with QuantLinear in place of each quantized layer. Layers kept in float
        (skipped, shapes or dtypes the kernels cannot take, not reached by calibration) are
        listed in one warning; layers quantized without smoothing because calibration never
        reached them (dynamic activations with ``smooth_alpha``) in another.
    """
    if isinstance(model, nn.Linear):
        raise TypeError("int8q.quantize_model swaps layers inside a model; for one nn.Linear use QuantLinear.from_linear")
    if act not in ("dynamic", "static"):
        raise ValueError(f"int8q.quantize_model: act must be 'dynamic' or 'static', got {act!r}")
    if method is not None and method not in CALIBRATION_METHODS:
        raise ValueError(f"int8q.quantize_model: method must be one of {CALIBRATION_METHODS}, got {method!r}")
    needs_stats = act == "static" or smooth_alpha is not None
    if needs_stats and calib_data is None and calib_stats is None:
        what = "act='static'" if act == "static" else "smooth_alpha"
        raise ValueError(
            f"int8q.quantize_model: {what} needs calibration data; pass calib_data (batches of model "
            "inputs) or calib_stats (from int8q.calibrate)"
        )
    if calib_data is not None and calib_stats is not None:
        raise ValueError("int8q.quantize_model: pass calib_data or calib_stats, not both")
    if calib_stats is not None and method is not None:
        raise ValueError(
            "int8q.quantize_model: method applies when calibrating from calib_data; "
            "calib_stats carry the method int8q.calibrate was given"
        )
    if smooth_alpha is not None and not 0.0 <= smooth_alpha <= 1.0:
        raise ValueError(f"int8q.quantize_model: smooth_alpha must be in [0, 1], got {smooth_alpha}")

    if isinstance(skip, (str, re.Pattern)):
        skip = (skip,)
    kept: Dict[str, str] = {}
    selected: List[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        reason = "skipped by pattern" if any(_matches(name, p) for p in skip) else _unsupported_reason(module)
        if reason is None:
            selected.append(name)
        else:
            kept[name] = reason

    stats: Mapping[str, ActivationStats] = {}
    if needs_stats:
        if calib_stats is not None:
            stats = calib_stats
        else:
            stats = calibrate(
                model, calib_data, method=method or "absmax", progress=progress, **calibrate_kwargs
            )
    if act == "static":
        for name in [n for n in selected if n not in stats]:
            kept[name] = "never called during calibration (no static scale)"
            selected.remove(name)

    # s per input channel of every smoothed layer: folded (its weights and its producer's
    # already rewritten) or, where no fold exists, applied in the kernel (in_kernel).
    factors: Dict[str, torch.Tensor] = {}
    in_kernel: Dict[str, torch.Tensor] = {}
    if smooth_alpha is not None:
        factors, unfolded = smooth_model(model, stats, smooth_alpha, layers=selected)
        # From the weights as the folds left them (a Linear producer's rows were divided by s).
        for name in unfolded:
            if name in stats:
                in_kernel[name] = linear_smoothing_factors(model.get_submodule(name), stats[name], smooth_alpha)
        factors.update(in_kernel)
        unsmoothed = [name for name in unfolded if name not in in_kernel]
        if unsmoothed:
            warnings.warn(
                f"int8q.quantize_model: {len(unsmoothed)} layer(s) are quantized without SmoothQuant: "
                "calibration never called them, so there are no activation statistics:\n"
                + "\n".join(f"  {name}" for name in unsmoothed),
                stacklevel=2,
            )

    # Build every QuantLinear before swapping any, so a failure leaves no half-swapped model.
    quantized = {}
    for name in selected:
        linear = model.get_submodule(name)
        smooth = 1.0 / in_kernel[name] if name in in_kernel else None
        if act == "static":
            layer_stats = stats[name].smoothed(factors[name]) if name in factors else stats[name]
            scale, shift = layer_stats.act_params()
            quantized[name] = QuantLinear.from_linear(
                linear, act="static", act_scale=scale, act_shift=shift, per_channel=per_channel, smooth=smooth
            )
        else:
            quantized[name] = QuantLinear.from_linear(linear, act="dynamic", per_channel=per_channel, smooth=smooth)
    for name, qlinear in quantized.items():
        replace_module(model, name, qlinear)
    _warn_kept_float(kept)
    return model
