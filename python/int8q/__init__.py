"""int8q: W8A8 (int8 weights, int8 activations) inference kernels for PyTorch."""

import torch

from . import _C  # noqa: F401  (loads the op library into torch.ops.int8q)
from . import ops, reference
from .calibration import ActivationStats, calibrate
from .nn import QuantLinear
from .quantize import quantize_model
from .serialization import load_quantized, save_quantized
from .smooth import smooth_model
from .ops import matmul, quantize_activation, quantize_weight, scaled_mm

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "QuantLinear",
    "calibrate",
    "load_quantized",
    "quantize_model",
    "save_quantized",
    "smooth_model",
    "has_cuda_kernels",
    "matmul",
    "ops",
    "reference",
    "quantize_activation",
    "quantize_weight",
    "scaled_mm",
]


def has_cuda_kernels() -> bool:
    """True when this build of int8q carries its CUDA kernels (independent of a GPU being present)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("int8q::matmul", "CUDA")
