"""Save a quantized model and load it back into a float model of the same architecture.

A saved model is a directory with two files:

- ``model.safetensors``: the quantized model's whole state_dict. Norm and Linear weights
  rewritten by SmoothQuant are part of it, so loading restores the folds too. Tensors that
  share storage (tied embeddings) are written once; the config names their aliases.
- ``int8q_config.json``: format version, the SHA-256 of the tensor file, and every
  QuantLinear's settings (shape, bias, act, per_channel, shifted, smoothed). A layer
  without ``smoothed`` (written before in-kernel smoothing existed) reads as not smoothed.

:func:`load_quantized` checks everything (version, checksum, that each listed layer is an
nn.Linear of the right shape, that the tensors match the model's state_dict key for key and
shape for shape) before it touches the model, so a mismatched file leaves it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Set, Union

import torch
from torch import Tensor, nn

from .nn import QuantLinear, finite_and_positive
from .quantize import replace_module

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "TENSORS_NAME", "load_quantized", "save_quantized"]

FORMAT_VERSION = 1
CONFIG_NAME = "int8q_config.json"
TENSORS_NAME = "model.safetensors"
_FORMAT = "int8q"

PathLike = Union[str, "os.PathLike[str]"]


def _layer_config(layer: QuantLinear) -> Dict[str, Any]:
    return {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "bias": layer.bias is not None,
        "act": layer.act,
        "per_channel": layer.per_channel,
        "shifted": layer.shifted,
        "smoothed": layer.smoothed,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _storage_key(t: Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def save_quantized(model: nn.Module, path: PathLike, *, metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``model`` (quantized with :func:`int8q.quantize_model`) to the directory ``path``.

    Args:
        model: a model holding at least one :class:`int8q.QuantLinear`.
        path: output directory (created if needed); existing int8q files are replaced.
        metadata: JSON-serialisable extras stored in the config (e.g. how it was calibrated).

    Returns:
        The directory, as a Path.
    """
    from safetensors.torch import save_file

    layers = {name: _layer_config(m) for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ValueError("int8q.save_quantized: the model holds no QuantLinear; call int8q.quantize_model first")
    tensors: Dict[str, Tensor] = {}
    aliases: Dict[str, str] = {}
    first_name: Dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        key = _storage_key(tensor)
        if key in first_name:
            aliases[name] = first_name[key]
            continue
        first_name[key] = name
        tensors[name] = tensor.detach().cpu().contiguous()

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensor_path = out / TENSORS_NAME
    save_file(tensors, str(tensor_path), metadata={"format": "pt"})
    config = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "sha256": _sha256(tensor_path),
        "layers": layers,
        "aliases": aliases,
        "metadata": dict(metadata or {}),
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def _read_config(directory: Path) -> Dict[str, Any]:
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"int8q.load_quantized: {config_path} not found; is {directory} a save_quantized directory?"
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"int8q.load_quantized: {config_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"int8q.load_quantized: {config_path} is not an int8q config")
    if config.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"int8q.load_quantized: {config_path} has format version {config.get('version')!r}; "
            f"this int8q reads version {FORMAT_VERSION}"
        )
    for key, kind in (("sha256", str), ("layers", dict), ("aliases", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"int8q.load_quantized: {config_path} lacks a valid {key!r} entry")
    return config


def _read_tensors(directory: Path, expected_sha256: str) -> Dict[str, Tensor]:
    from safetensors.torch import load_file

    tensor_path = directory / TENSORS_NAME
    if not tensor_path.is_file():
        raise FileNotFoundError(f"int8q.load_quantized: {tensor_path} not found")
    if _sha256(tensor_path) != expected_sha256:
        raise ValueError(
            f"int8q.load_quantized: {tensor_path} does not match the checksum in {CONFIG_NAME}; "
            "the file is truncated, corrupted or from another save"
        )
    try:
        return load_file(str(tensor_path))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"int8q.load_quantized: cannot read {tensor_path}: {e}") from None


def _build_layers(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> Dict[str, QuantLinear]:
    """One unattached QuantLinear per listed layer, after checking the model's Linear there."""
    problems = []
    built: Dict[str, QuantLinear] = {}
    for name, cfg in layers.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            problems.append(f"{name}: no such module in the model")
            continue
        if not isinstance(linear, nn.Linear):
            problems.append(f"{name}: expected an nn.Linear, found {type(linear).__name__}")
            continue
        got = (linear.in_features, linear.out_features, linear.bias is not None)
        want = (cfg.get("in_features"), cfg.get("out_features"), cfg.get("bias"))
        if got != want:
            problems.append(f"{name}: (in, out, bias) is {got} in the model but {want} in the file")
            continue
        try:
            built[name] = QuantLinear(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                act=cfg["act"],
                per_channel=cfg["per_channel"],
                shifted=cfg["shifted"],
                smoothed=cfg.get("smoothed", False),
                device=linear.weight.device,
                dtype=linear.bias.dtype if linear.bias is not None else linear.weight.dtype,
            )
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"{name}: invalid layer settings {dict(cfg)} ({e})")
    if problems:
        raise ValueError("int8q.load_quantized: the file does not match the model:\n  " + "\n  ".join(problems))
    return built


def _expected_state(model: nn.Module, built: Mapping[str, QuantLinear]) -> Dict[str, Tensor]:
    """The state_dict the model will have once the QuantLinear layers are in place."""
    expected = {}
    for key, value in model.state_dict().items():
        if not any(key.startswith(name + ".") for name in built):
            expected[key] = value
    for name, layer in built.items():
        for key, value in layer.state_dict().items():
            expected[f"{name}.{key}"] = value
    return expected


def _check_tensors(
    tensors: Mapping[str, Tensor], expected: Mapping[str, Tensor], smooth_keys: Set[str]
) -> None:
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing from the file: {missing}")
    if unexpected:
        problems.append(f"in the file but not in the model: {unexpected}")
    for key in sorted(set(expected) & set(tensors)):
        want, got = expected[key], tensors[key]
        if want.shape != got.shape:
            problems.append(f"{key}: shape {tuple(got.shape)} in the file, {tuple(want.shape)} in the model")
        elif (want.is_floating_point() != got.is_floating_point()) or (
            not want.is_floating_point() and want.dtype != got.dtype
        ):
            problems.append(f"{key}: dtype {got.dtype} in the file, {want.dtype} in the model")
        elif key.endswith(".act_scale") and not finite_and_positive(got):
            problems.append(f"{key}: a static activation scale must be finite and positive, got {got.tolist()}")
        elif key in smooth_keys and not finite_and_positive(got):
            problems.append(f"{key}: the SmoothQuant multipliers must be finite and positive")
    if problems:
        raise ValueError("int8q.load_quantized: the file does not match the model:\n  " + "\n  ".join(problems))


def load_quantized(model: nn.Module, path: PathLike) -> nn.Module:
    """Load a :func:`save_quantized` directory into ``model``, in place, and return it.

    ``model`` is the float model of the same architecture (freshly built or loaded with its
    original weights): the listed nn.Linear layers become QuantLinear and every tensor,
    smoothing folds included, is restored. Floating-point tensors are cast to the model's
    dtypes. On any mismatch (missing layer, wrong shape, wrong version, truncated or
    corrupted file) it raises before changing the model.
    """
    directory = Path(path)
    config = _read_config(directory)
    tensors = _read_tensors(directory, config["sha256"])
    for alias, source in config["aliases"].items():
        if source not in tensors:
            raise ValueError(f"int8q.load_quantized: alias {alias!r} points at {source!r}, which the file lacks")
        tensors[alias] = tensors[source]
    built = _build_layers(model, config["layers"])
    smooth_keys = {f"{name}.smooth" for name, layer in built.items() if layer.smoothed}
    _check_tensors(tensors, _expected_state(model, built), smooth_keys)

    for name, layer in built.items():
        replace_module(model, name, layer)
    model.load_state_dict(tensors, strict=True)
    return model
