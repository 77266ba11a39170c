"""SmoothQuant: move activation outliers into the weights, at no or almost no run-time cost.

For a Linear ``y = x @ W.T`` and a per-input-channel vector ``s > 0``,
``y = (x / s) @ (W * s).T``: dividing channel ``j`` of the activations by
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` flattens the outlier channels that make a
per-tensor activation scale coarse, and the weights (quantized per output channel) absorb
the difference. Where the model's structure allows, the division is folded into whatever
produces ``x`` and never runs; elsewhere :class:`int8q.QuantLinear` multiplies ``x`` by
``1/s`` inside its activation quantization kernel (its ``smooth`` buffer), in the same
pass over the activations.

Folds recognised (by module structure, so any model with these layouts qualifies):

- LLaMA-style decoder layers (LLaMA, Mistral, Qwen2 in transformers): ``input_layernorm``
  -> ``q_proj``/``k_proj``/``v_proj``; ``post_attention_layernorm`` -> ``gate_proj``/``up_proj``;
  ``v_proj`` -> ``o_proj`` (attention mixes tokens, never channels; grouped-query heads
  share one factor per key/value channel); ``up_proj`` -> ``down_proj`` (the MLP multiplies
  ``act(gate)`` by ``up`` channel by channel).
- OPT-style pre-norm layers: ``self_attn_layer_norm`` -> ``q/k/v_proj``; ``final_layer_norm``
  -> ``fc1``; ``v_proj`` -> ``out_proj``; ``fc1`` -> ``fc2`` when the activation is ReLU
  (``relu(x / s) = relu(x) / s`` for ``s > 0``).
- BERT-style layers: ``attention.self.value`` -> ``attention.output.dense``. BERT's
  LayerNorms sit after the residual add, so their output is also the residual stream:
  dividing it by ``s`` would change what the next LayerNorm sees, so q/k/v and
  ``intermediate.dense`` have no fold; nor has ``output.dense`` (GELU is not linear).

A norm is folded into only when it is a LayerNorm or an RMSNorm of the ``weight * x_hat``
kind (``nn.LayerNorm``, ``nn.RMSNorm``, LLaMA/Mistral/Qwen2's RMSNorm).
:func:`smooth_model` makes the folds and reports the layers without one;
:func:`linear_smoothing_factors` gives such a layer's factors for QuantLinear's ``smooth``
(:func:`int8q.quantize_model` does both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .calibration import ActivationStats

__all__ = [
    "SmoothingGroup",
    "find_smoothing_groups",
    "linear_smoothing_factors",
    "smooth_model",
    "smoothing_factors",
]

# RMSNorms computing ``weight * x / rms(x)``; Gemma's ``(1 + weight)`` form is deliberately absent.
_FOLDABLE_RMSNORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
_MIN_FACTOR = 1e-5


@dataclass(frozen=True)
class SmoothingGroup:
    """Linear layers that read one producer's output, channel for channel.

    Attributes:
        producer: name of the norm or Linear whose output channels are divided by ``s``.
        consumers: names of the Linear layers whose input columns are multiplied by ``s``.
        channel_map: ``[K]`` index of the producer channel feeding each consumer input
            channel (grouped-query attention repeats key/value heads); None when identity.
    """

    producer: str
    consumers: Tuple[str, ...]
    channel_map: Optional[Tensor] = None


def smoothing_factors(act_absmax: Tensor, weight_absmax: Tensor, alpha: float) -> Tensor:
    """``s_j = act_absmax_j^alpha / weight_absmax_j^(1 - alpha)``; 1 where either is zero."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"int8q: smooth_alpha must be in [0, 1], got {alpha}")
    a = act_absmax.float()
    w = weight_absmax.float().to(a.device)
    s = a.clamp(min=_MIN_FACTOR).pow(alpha) / w.clamp(min=_MIN_FACTOR).pow(1.0 - alpha)
    usable = (a > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(usable, s.clamp(min=_MIN_FACTOR), torch.ones_like(s))


def linear_smoothing_factors(linear: nn.Linear, stats: ActivationStats, alpha: float) -> Tensor:
    """``s`` over one Linear's input channels, from its own weights and input statistics.

    For a layer with no fold: :meth:`int8q.QuantLinear.from_linear` takes ``smooth=1 / s``
    and applies it in the kernel; ``stats.smoothed(s)`` describes the activations it then
    quantizes.
    """
    weight_absmax = linear.weight.detach().abs().amax(dim=0).float().cpu()
    return smoothing_factors(stats.absmax, weight_absmax, alpha)


def _is_foldable_norm(module: Optional[nn.Module]) -> bool:
    if module is None or getattr(module, "weight", None) is None:
        return False
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__ in _FOLDABLE_RMSNORMS


def _linear(block: nn.Module, path: str) -> Optional[nn.Linear]:
    try:
        module = block.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, nn.Linear) else None


def _gqa_channel_map(attn: nn.Module, v_out: int, o_in: int) -> Optional[Tensor]:
    """Which value channel feeds each o_proj input channel when key/value heads are shared."""
    groups = getattr(attn, "num_key_value_groups", None)
    head_dim = getattr(attn, "head_dim", None)
    if not groups or not head_dim or v_out * groups != o_in or o_in % head_dim:
        return None
    channel = torch.arange(o_in)
    return (channel // head_dim // groups) * head_dim + channel % head_dim


def _llama_groups(prefix: str, block: nn.Module) -> List[SmoothingGroup]:
    groups = []
    qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    if _is_foldable_norm(getattr(block, "input_layernorm", None)) and all(_linear(block, p) for p in qkv):
        groups.append(SmoothingGroup(prefix + "input_layernorm", tuple(prefix + p for p in qkv)))
    gate_up = ("mlp.gate_proj", "mlp.up_proj")
    if _is_foldable_norm(getattr(block, "post_attention_layernorm", None)) and all(
        _linear(block, p) for p in gate_up
    ):
        groups.append(SmoothingGroup(prefix + "post_attention_layernorm", tuple(prefix + p for p in gate_up)))
    v, o = _linear(block, "self_attn.v_proj"), _linear(block, "self_attn.o_proj")
    if v is not None and o is not None:
        if v.out_features == o.in_features:
            groups.append(SmoothingGroup(prefix + "self_attn.v_proj", (prefix + "self_attn.o_proj",)))
        else:
            channel_map = _gqa_channel_map(block.self_attn, v.out_features, o.in_features)
            if channel_map is not None:
                groups.append(
                    SmoothingGroup(prefix + "self_attn.v_proj", (prefix + "self_attn.o_proj",), channel_map)
                )
    up, down = _linear(block, "mlp.up_proj"), _linear(block, "mlp.down_proj")
    if up is not None and down is not None and up.out_features == down.in_features:
        groups.append(SmoothingGroup(prefix + "mlp.up_proj", (prefix + "mlp.down_proj",)))
    return groups


def _opt_groups(prefix: str, block: nn.Module) -> List[SmoothingGroup]:
    # Post-norm OPT variants (opt-350m) normalise after the residual add: nothing to fold into.
    if getattr(block, "do_layer_norm_before", None) is not True:
        return []
    groups = []
    qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    if _is_foldable_norm(getattr(block, "self_attn_layer_norm", None)) and all(_linear(block, p) for p in qkv):
        groups.append(SmoothingGroup(prefix + "self_attn_layer_norm", tuple(prefix + p for p in qkv)))
    if _is_foldable_norm(getattr(block, "final_layer_norm", None)) and _linear(block, "fc1") is not None:
        groups.append(SmoothingGroup(prefix + "final_layer_norm", (prefix + "fc1",)))
    v, out = _linear(block, "self_attn.v_proj"), _linear(block, "self_attn.out_proj")
    if v is not None and out is not None and v.out_features == out.in_features:
        groups.append(SmoothingGroup(prefix + "self_attn.v_proj", (prefix + "self_attn.out_proj",)))
    fc1, fc2 = _linear(block, "fc1"), _linear(block, "fc2")
    if (
        fc1 is not None
        and fc2 is not None
        and fc1.out_features == fc2.in_features
        and isinstance(getattr(block, "activation_fn", None), nn.ReLU)
    ):
        groups.append(SmoothingGroup(prefix + "fc1", (prefix + "fc2",)))
    return groups


def _bert_groups(prefix: str, block: nn.Module) -> List[SmoothingGroup]:
    value, dense = _linear(block, "attention.self.value"), _linear(block, "attention.output.dense")
    if value is None or dense is None or value.out_features != dense.in_features:
        return []
    return [SmoothingGroup(prefix + "attention.self.value", (prefix + "attention.output.dense",))]


def find_smoothing_groups(model: nn.Module) -> List[SmoothingGroup]:
    """Every fold :func:`smooth_model` can make in ``model`` (see the module docstring)."""
    groups: List[SmoothingGroup] = []
    for name, block in model.named_modules():
        prefix = name + "." if name else ""
        if hasattr(block, "input_layernorm") and hasattr(block, "self_attn") and hasattr(block, "mlp"):
            groups += _llama_groups(prefix, block)
        elif hasattr(block, "self_attn_layer_norm") and hasattr(block, "fc1"):
            groups += _opt_groups(prefix, block)
        elif hasattr(block, "attention") and hasattr(block, "intermediate"):
            groups += _bert_groups(prefix, block)
    return groups


def _group_factors(
    model: nn.Module, group: SmoothingGroup, stats: Mapping[str, ActivationStats], alpha: float
) -> Optional[Tensor]:
    """The factor per producer channel, or None when calibration never reached the group."""
    if any(name not in stats for name in group.consumers):
        return None
    act = torch.stack([stats[name].absmax for name in group.consumers]).amax(dim=0)
    weight = torch.stack(
        [model.get_submodule(name).weight.detach().abs().amax(dim=0).float().cpu() for name in group.consumers]
    ).amax(dim=0)
    if group.channel_map is not None:
        n_out = int(group.channel_map.max()) + 1
        act = torch.zeros(n_out).scatter_reduce(0, group.channel_map, act, "amax")
        weight = torch.zeros(n_out).scatter_reduce(0, group.channel_map, weight, "amax")
    return smoothing_factors(act, weight, alpha)


def _scale_(param: Optional[Tensor], factor: Tensor) -> None:
    if param is not None:
        param.copy_((param.float() * factor.to(param.device)).to(param.dtype))


def smooth_model(
    model: nn.Module,
    stats: Mapping[str, ActivationStats],
    alpha: float,
    *,
    layers: Optional[Iterable[str]] = None,
) -> Tuple[Dict[str, Tensor], List[str]]:
    """Apply SmoothQuant in place, folding every ``1/s`` into a norm or a preceding Linear.

    Args:
        model: the float model; its norm and Linear weights are rewritten (outputs unchanged
            up to rounding).
        stats: :func:`int8q.calibrate` output for the float model.
        alpha: migration strength in [0, 1] (0.5 to 0.9 is typical; higher moves more of
            the activation range into the weights).
        layers: the Linear layers that want smoothing (default: every nn.Linear).

    Returns:
        ``(factors, unsmoothed)``: ``factors[name]`` is ``s`` over each smoothed layer's input
        channels (its activations are now ``x / s``; see :meth:`ActivationStats.smoothed`),
        and ``unsmoothed`` lists the requested layers with no fold available (for these,
        :func:`linear_smoothing_factors` and QuantLinear's ``smooth``).
    """
    wanted = set(layers) if layers is not None else {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    plans = []
    for group in find_smoothing_groups(model):
        if not wanted.intersection(group.consumers):
            continue
        factors = _group_factors(model, group, stats, alpha)
        if factors is not None:
            plans.append((group, factors))

    # All factors come from the original weights; the folds then commute, so order is free.
    consumer_factors: Dict[str, Tensor] = {}
    with torch.no_grad():
        for group, factors in plans:
            producer = model.get_submodule(group.producer)
            if isinstance(producer, nn.Linear):
                _scale_(producer.weight, (1.0 / factors)[:, None])
            else:
                _scale_(producer.weight, 1.0 / factors)
            _scale_(getattr(producer, "bias", None), 1.0 / factors)
            per_input = factors if group.channel_map is None else factors[group.channel_map]
            for name in group.consumers:
                _scale_(model.get_submodule(name).weight, per_input[None, :])
                consumer_factors[name] = per_input
    unsmoothed = sorted(wanted - set(consumer_factors))
    return consumer_factors, unsmoothed
