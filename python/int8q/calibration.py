"""Calibration: run sample inputs through a model and record what every nn.Linear sees.

:func:`calibrate` returns one :class:`ActivationStats` per ``nn.Linear``: per-input-channel
minimum and maximum (their absolute maximum drives SmoothQuant) and, for the ``percentile``
and ``mse`` methods, a bounded random sample of input rows. From these,
:meth:`ActivationStats.act_params` picks the static per-tensor scale (and shift) that
:class:`int8q.QuantLinear` uses.

Clipping methods (the per-tensor range ``[lo, hi]`` that the int8 codes cover):

- ``absmax``: the full observed range. Nothing is clipped; outliers set the step size.
- ``percentile``: the ``percentile``-th and ``(100 - percentile)``-th percentiles of the
  sampled activations (default 99.99): the rarest values are clipped.
- ``mse``: the observed range shrunk by the ratio ``r`` in ``(0, 1]`` (a grid of
  ``mse_grid`` ratios) that minimises the mean squared quantization error of the sampled
  activations, clipping included.

The sample holds whole input rows (tokens), chosen uniformly at random over the whole run
(each row gets a random key and the rows with the smallest keys are kept), capped at
``sample_size`` values per layer, so memory stays bounded however long calibration runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ActivationStats", "CALIBRATION_METHODS", "calibrate", "run_batch"]

CALIBRATION_METHODS = ("absmax", "percentile", "mse")

_SYM_MAX = 127.0
_SHIFTED_LEVELS = 255.0
_SHIFTED_MIN = -128.0
# A shifted (asymmetric) range is used only when it shrinks the quantization step by more than
# this factor against the symmetric one; a range centred near zero gains nothing from a shift.
_SHIFT_MIN_GAIN = 0.9


@dataclass(frozen=True)
class ActivationStats:
    """What one nn.Linear saw at its input during calibration.

    Attributes:
        channel_min, channel_max: float32 ``[K]``, per input channel, over every row seen.
        rows: how many input rows (tokens) were seen.
        sample: float32 ``[R, K]`` random rows kept for ``percentile``/``mse``, else None.
        method, percentile, mse_grid: how :meth:`clip_range` chooses the range.
    """

    channel_min: Tensor
    channel_max: Tensor
    rows: int
    sample: Optional[Tensor] = None
    method: str = "absmax"
    percentile: float = 99.99
    mse_grid: int = 100

    @property
    def absmax(self) -> Tensor:
        """Per-input-channel ``max |x_j|``, float32 ``[K]`` (what SmoothQuant balances)."""
        return torch.maximum(self.channel_min.abs(), self.channel_max.abs())

    def smoothed(self, smooth: Tensor) -> "ActivationStats":
        """The statistics of ``x / smooth`` (per channel, ``smooth > 0``), without a new pass."""
        s = smooth.to(self.channel_min.device, torch.float32)
        sample = None if self.sample is None else self.sample / s.to(self.sample.device)
        return replace(self, channel_min=self.channel_min / s, channel_max=self.channel_max / s, sample=sample)

    def clip_range(self) -> Tuple[float, float]:
        """The per-tensor range ``(lo, hi)`` the codes should cover, chosen by ``method``."""
        lo = float(self.channel_min.min())
        hi = float(self.channel_max.max())
        if self.method == "absmax" or self.sample is None or self.sample.numel() == 0:
            return lo, hi
        values = self.sample.reshape(-1)
        if self.method == "percentile":
            q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
            plo, phi = torch.quantile(values, q.to(values.device)).tolist()
            return plo, phi
        return _mse_clip_range(values, lo, hi, self.mse_grid)

    def act_params(self) -> Tuple[float, Optional[float]]:
        """Static ``(act_scale, act_shift)`` for QuantLinear; the shift is None when not needed.

        Symmetric: ``scale = max(|lo|, |hi|) / 127``, codes in [-127, 127].
        Shifted (``q = round((x - shift) / scale)``, codes in [-128, 127]): ``lo`` maps to
        -128 and ``hi`` to 127, so ``scale = (hi - lo) / 255`` and ``shift = lo + 128 * scale``.
        """
        return range_to_act_params(*self.clip_range())


def range_to_act_params(lo: float, hi: float) -> Tuple[float, Optional[float]]:
    """Static ``(scale, shift or None)`` covering ``[lo, hi]``; see :meth:`ActivationStats.act_params`."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    sym_scale = max(-lo, hi) / _SYM_MAX
    shifted_scale = (hi - lo) / _SHIFTED_LEVELS
    if not sym_scale > 0 or not math.isfinite(sym_scale):
        return 1.0, None  # the layer only ever saw zeros: any scale gives zero codes
    if shifted_scale < _SHIFT_MIN_GAIN * sym_scale:
        return shifted_scale, lo - _SHIFTED_MIN * shifted_scale
    return sym_scale, None


def _fake_quantize(x: Tensor, scale: float, shift: Optional[float]) -> Tensor:
    if shift is None:
        return torch.round(x / scale).clamp(-_SYM_MAX, _SYM_MAX) * scale
    return torch.round((x - shift) / scale).clamp(_SHIFTED_MIN, _SYM_MAX) * scale + shift


def _mse_clip_range(values: Tensor, lo: float, hi: float, grid: int) -> Tuple[float, float]:
    best_err, best = math.inf, (lo, hi)
    # From the full range down: on ties the wider range (less clipping) wins.
    for i in range(grid, 0, -1):
        r = i / grid
        scale, shift = range_to_act_params(r * lo, r * hi)
        err = float(torch.mean((_fake_quantize(values, scale, shift) - values) ** 2))
        if err < best_err:
            best_err, best = err, (r * lo, r * hi)
    return best


class _Observer:
    """Accumulates the statistics of one layer's inputs."""

    def __init__(self, name: str, in_features: int, sample_rows: int, generator: torch.Generator) -> None:
        self.name = name
        self.in_features = in_features
        self.sample_rows = sample_rows
        self.generator = generator
        self.channel_min: Optional[Tensor] = None
        self.channel_max: Optional[Tensor] = None
        self.rows = 0
        self.sample: Optional[Tensor] = None
        self.sample_keys: Optional[Tensor] = None

    def hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.observe(args[0] if args else kwargs["input"])

    def observe(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, self.in_features).float()
        if rows.shape[0] == 0:
            return
        if not torch.isfinite(rows).all():
            raise ValueError(
                f"int8q.calibrate: the input of layer {self.name!r} contains NaN or Inf; "
                "calibrate in a dtype that does not overflow (e.g. float32)"
            )
        bmin, bmax = rows.amin(dim=0), rows.amax(dim=0)
        if self.channel_min is None:
            self.channel_min, self.channel_max = bmin, bmax
        else:
            self.channel_min = torch.minimum(self.channel_min, bmin)
            self.channel_max = torch.maximum(self.channel_max, bmax)
        self.rows += rows.shape[0]
        if self.sample_rows > 0:
            self._keep_sample(rows)

    def _keep_sample(self, rows: Tensor) -> None:
        keys = torch.rand(rows.shape[0], generator=self.generator).to(rows.device)
        if self.sample is not None:
            rows = torch.cat([self.sample, rows])
            keys = torch.cat([self.sample_keys, keys])
        if rows.shape[0] > self.sample_rows:
            keep = torch.topk(keys, self.sample_rows, largest=False).indices
            rows, keys = rows[keep], keys[keep]
        self.sample, self.sample_keys = rows, keys

    def stats(self, method: str, percentile: float, mse_grid: int) -> ActivationStats:
        return ActivationStats(
            channel_min=self.channel_min.cpu(),
            channel_max=self.channel_max.cpu(),
            rows=self.rows,
            sample=None if self.sample is None else self.sample.cpu(),
            method=method,
            percentile=percentile,
            mse_grid=mse_grid,
        )


def model_device(model: nn.Module) -> Optional[torch.device]:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _to_device(value: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return value
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def run_batch(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on one batch: a tensor, a tuple/list of positional inputs, or a dict of
    keyword inputs (a tokenizer's output), moved to the model's device first."""
    batch = _to_device(batch, model_device(model))
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(
        f"int8q: a calibration batch must be a tensor, a tuple/list or a dict of model inputs, "
        f"got {type(batch).__name__}"
    )


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    method: str = "absmax",
    percentile: float = 99.99,
    mse_grid: int = 100,
    sample_size: int = 1 << 18,
    layers: Optional[Sequence[str]] = None,
    progress: bool = True,
    seed: int = 0,
) -> Dict[str, ActivationStats]:
    """Run ``batches`` through ``model`` and return the input statistics of every nn.Linear.

    Args:
        model: any nn.Module; it runs in eval mode under ``torch.no_grad`` (its training
            flag is restored afterwards) and is not modified.
        batches: iterable of model inputs, each a tensor, a tuple/list (positional) or a
            dict (keyword, e.g. a tokenizer's output); moved to the model's device.
        method: how :meth:`ActivationStats.clip_range` picks the static range:
            ``"absmax"``, ``"percentile"`` or ``"mse"`` (see the module docstring).
        percentile: for ``method="percentile"``, in (50, 100].
        mse_grid: for ``method="mse"``, how many clip ratios are tried.
        sample_size: values kept per layer for ``percentile``/``mse`` (whole rows).
        layers: names of the nn.Linear modules to observe (default: all of them).
        progress: show a tqdm progress bar.
        seed: seeds the row sampling, so calibration is reproducible.

    Returns:
        ``{module name: ActivationStats}`` for every observed layer that received input.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"int8q.calibrate: method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise ValueError(f"int8q.calibrate: percentile must be in (50, 100], got {percentile}")
    if mse_grid < 1:
        raise ValueError(f"int8q.calibrate: mse_grid must be at least 1, got {mse_grid}")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if layers is not None:
        unknown = sorted(set(layers) - set(linears))
        if unknown:
            raise ValueError(f"int8q.calibrate: these layers are not nn.Linear modules of the model: {unknown}")
        linears = {name: linears[name] for name in layers}

    generator = torch.Generator().manual_seed(seed)
    keeps_sample = method != "absmax"
    observers = {}
    handles = []
    for name, linear in linears.items():
        sample_rows = max(1, sample_size // linear.in_features) if keeps_sample else 0
        observer = _Observer(name, linear.in_features, sample_rows, generator)
        observers[name] = observer
        handles.append(linear.register_forward_pre_hook(observer.hook, with_kwargs=True))

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="int8q calibrate", unit="batch", disable=not progress):
                run_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {
        name: obs.stats(method, percentile, mse_grid) for name, obs in observers.items() if obs.rows > 0
    }
