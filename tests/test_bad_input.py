"""The bad-input table: every check of csrc/checks.h raises a RuntimeError naming the op and
the problem, on every device (the checks are shared by the CPU and CUDA kernels).
"""

from __future__ import annotations

import math

import pytest
import torch

import int8q
from conftest import HAS_CUDA, MAX_K, cuda

ops = torch.ops.int8q

N, K, M = 6, 32, 4


def _inputs(device):
    """Valid inputs for every op, as a dict a case copies and breaks one entry of."""
    g = torch.Generator().manual_seed(0)
    return dict(
        weight=torch.randn(N, K, generator=g).to(device),
        x=torch.randn(M, K, generator=g).to(device),
        xq=torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8).to(device),
        qweight=torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).to(device),
        w_scale=torch.rand(N, generator=g).add(0.01).to(device),
        x_scale=torch.tensor([0.05], device=device),
        x_shift=torch.tensor([0.1], device=device),
        row_scale=torch.rand(M, generator=g).add(0.01).to(device),
        bias=torch.randn(N, generator=g).to(device),
        x_smooth=torch.rand(K, generator=g).add(0.5).to(device),
        w_sum=torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8).sum(1, dtype=torch.int32).to(device),
    )


def _quantize_weight(a):
    return ops.quantize_weight(a["weight"], True)


def _quantize_activation(a):
    return ops.quantize_activation(a["x"], a.get("x_scale_qa"), a.get("x_shift_qa"), a.get("x_smooth_qa"))


def _matmul(a):
    return ops.matmul(a["x"], a["qweight"], a["w_scale"], a.get("x_scale_mm"), a.get("x_shift_mm"), a.get("bias_mm"),
                      a.get("x_smooth_mm"), a.get("w_sum_mm"))


def _scaled_mm(a):
    return ops.scaled_mm(a["xq"], a["qweight"], a["row_scale"], a["w_scale"], a.get("bias_mm"), a.get("out_dtype"))


OPS = {
    "quantize_weight": _quantize_weight,
    "quantize_activation": _quantize_activation,
    "matmul": _matmul,
    "scaled_mm": _scaled_mm,
}

# (op, id, change to the valid inputs, regex the message must match after "int8q.<op>: ").
# A change is a function of (inputs dict) mutating it in place.
CASES = [
    # dtypes
    ("quantize_weight", "weight_float64", lambda a: a.update(weight=a["weight"].double()),
     r"weight must be float32, float16 or bfloat16, got Double"),
    ("quantize_weight", "weight_int8", lambda a: a.update(weight=a["qweight"]),
     r"weight must be float32, float16 or bfloat16, got Char"),
    ("quantize_weight", "weight_int32", lambda a: a.update(weight=a["qweight"].int()),
     r"weight must be float32, float16 or bfloat16, got Int"),
    ("quantize_activation", "x_float64", lambda a: a.update(x=a["x"].double()),
     r"x must be float32, float16 or bfloat16, got Double"),
    ("quantize_activation", "x_int8", lambda a: a.update(x=a["xq"]),
     r"x must be float32, float16 or bfloat16, got Char"),
    ("matmul", "x_float64", lambda a: a.update(x=a["x"].double()),
     r"x must be float32, float16 or bfloat16, got Double"),
    ("matmul", "x_int32", lambda a: a.update(x=a["x"].int()),
     r"x must be float32, float16 or bfloat16, got Int"),
    ("matmul", "qweight_float", lambda a: a.update(qweight=a["weight"]),
     r"qweight must be int8, got Float"),
    ("matmul", "qweight_uint8", lambda a: a.update(qweight=a["qweight"].to(torch.uint8)),
     r"qweight must be int8, got Byte"),
    ("matmul", "w_scale_float16", lambda a: a.update(w_scale=a["w_scale"].half()),
     r"w_scale must be float32, got Half"),
    ("matmul", "w_scale_float64", lambda a: a.update(w_scale=a["w_scale"].double()),
     r"w_scale must be float32, got Double"),
    ("matmul", "bias_int32", lambda a: a.update(bias_mm=torch.zeros_like(a["bias"], dtype=torch.int32)),
     r"bias must be float32, float16 or bfloat16, got Int"),
    ("matmul", "bias_float64", lambda a: a.update(bias_mm=a["bias"].double()),
     r"bias must be float32, float16 or bfloat16, got Double"),
    ("scaled_mm", "xq_float", lambda a: a.update(xq=a["x"]),
     r"xq must be int8, got Float"),
    ("scaled_mm", "qweight_int32", lambda a: a.update(qweight=a["qweight"].int()),
     r"qweight must be int8, got Int"),
    ("scaled_mm", "x_scale_float16", lambda a: a.update(row_scale=a["row_scale"].half()),
     r"x_scale must be float32, got Half"),
    ("scaled_mm", "w_scale_bfloat16", lambda a: a.update(w_scale=a["w_scale"].bfloat16()),
     r"w_scale must be float32, got BFloat16"),
    ("scaled_mm", "bias_int64", lambda a: a.update(bias_mm=torch.zeros_like(a["bias"], dtype=torch.int64)),
     r"bias must be float32, float16 or bfloat16, got Long"),
    ("scaled_mm", "out_dtype_int32", lambda a: a.update(out_dtype=torch.int32),
     r"out_dtype must be float32, float16 or bfloat16, got Int"),
    ("scaled_mm", "out_dtype_float64", lambda a: a.update(out_dtype=torch.float64),
     r"out_dtype must be float32, float16 or bfloat16, got Double"),
    ("scaled_mm", "out_dtype_int8", lambda a: a.update(out_dtype=torch.int8),
     r"out_dtype must be float32, float16 or bfloat16, got Char"),
    # static activation parameters: dtype and number of elements
    ("quantize_activation", "x_scale_float16", lambda a: a.update(x_scale_qa=a["x_scale"].half()),
     r"x_scale must be float32, got Half"),
    ("quantize_activation", "x_scale_two_elements", lambda a: a.update(x_scale_qa=a["x_scale"].repeat(2)),
     r"x_scale must hold exactly one element .*got shape \[2\]"),
    ("quantize_activation", "x_scale_empty", lambda a: a.update(x_scale_qa=a["x_scale"][:0]),
     r"x_scale must hold exactly one element .*got shape \[0\]"),
    ("quantize_activation", "x_shift_float64", lambda a: a.update(x_scale_qa=a["x_scale"], x_shift_qa=a["x_shift"].double()),
     r"x_shift must be float32, got Double"),
    ("quantize_activation", "x_shift_two_elements", lambda a: a.update(x_scale_qa=a["x_scale"], x_shift_qa=a["x_shift"].repeat(2)),
     r"x_shift must hold exactly one element"),
    ("quantize_activation", "x_shift_without_x_scale", lambda a: a.update(x_shift_qa=a["x_shift"]),
     r"x_shift needs a static x_scale"),
    ("matmul", "x_scale_bfloat16", lambda a: a.update(x_scale_mm=a["x_scale"].bfloat16()),
     r"x_scale must be float32, got BFloat16"),
    ("matmul", "x_scale_per_row", lambda a: a.update(x_scale_mm=a["row_scale"]),
     r"x_scale must hold exactly one element .*got shape \[4\]"),
    ("matmul", "x_shift_int", lambda a: a.update(x_scale_mm=a["x_scale"], x_shift_mm=torch.ones(1, dtype=torch.int32, device=a["x"].device)),
     r"x_shift must be float32, got Int"),
    ("matmul", "x_shift_two_elements", lambda a: a.update(x_scale_mm=a["x_scale"], x_shift_mm=a["x_shift"].repeat(1, 2)),
     r"x_shift must hold exactly one element .*got shape \[1, 2\]"),
    ("matmul", "x_shift_without_x_scale", lambda a: a.update(x_shift_mm=a["x_shift"]),
     r"x_shift needs a static x_scale"),
    ("matmul", "w_sum_without_x_shift", lambda a: a.update(x_scale_mm=a["x_scale"], w_sum_mm=a["w_sum"]),
     r"w_sum \(the weight sums of the shift term\) is only used with x_shift"),
    ("matmul", "w_sum_int64", lambda a: a.update(x_scale_mm=a["x_scale"], x_shift_mm=a["x_shift"], w_sum_mm=a["w_sum"].long()),
     r"w_sum must be int32 \(qweight.sum\(1, dtype=torch.int32\)\), got Long"),
    ("matmul", "w_sum_float", lambda a: a.update(x_scale_mm=a["x_scale"], x_shift_mm=a["x_shift"], w_sum_mm=a["w_sum"].float()),
     r"w_sum must be int32 .*got Float"),
    ("matmul", "w_sum_wrong_length", lambda a: a.update(x_scale_mm=a["x_scale"], x_shift_mm=a["x_shift"], w_sum_mm=a["w_sum"][:5]),
     r"w_sum must have shape \[N\] = \[6\], got \[5\]"),
    ("matmul", "w_sum_2d", lambda a: a.update(x_scale_mm=a["x_scale"], x_shift_mm=a["x_shift"], w_sum_mm=a["w_sum"][None]),
     r"w_sum must have shape \[N\] = \[6\], got \[1, 6\]"),
    ("scaled_mm", "x_scale_wrong_numel", lambda a: a.update(row_scale=a["row_scale"][:3]),
     r"x_scale must hold one scale per row of xq \(4 elements.*got shape \[3\]"),
    ("scaled_mm", "x_scale_too_many", lambda a: a.update(row_scale=torch.ones(N, device=a["x"].device)),
     r"x_scale must hold one scale per row of xq .*got shape \[6\]"),
    # ranks and shapes
    ("quantize_weight", "weight_1d", lambda a: a.update(weight=a["weight"][0]),
     r"weight must be 2-D \[N, K\].*got shape \[32\]"),
    ("quantize_weight", "weight_3d", lambda a: a.update(weight=a["weight"][None]),
     r"weight must be 2-D \[N, K\].*got shape \[1, 6, 32\]"),
    ("quantize_activation", "x_scalar", lambda a: a.update(x=a["x"][0, 0]),
     r"x must have at least 1 dimension"),
    ("matmul", "x_scalar", lambda a: a.update(x=a["x"][0, 0]),
     r"x must have at least 1 dimension"),
    ("matmul", "qweight_1d", lambda a: a.update(qweight=a["qweight"][0]),
     r"qweight must be 2-D \[N, K\], got shape \[32\]"),
    ("matmul", "qweight_3d", lambda a: a.update(qweight=a["qweight"][None]),
     r"qweight must be 2-D \[N, K\], got shape \[1, 6, 32\]"),
    ("matmul", "K_mismatch", lambda a: a.update(x=a["x"][:, :-1]),
     r"x has K = 31 in its last dimension but qweight is \[N, K\] = \[6, 32\]"),
    ("matmul", "K_mismatch_transposed_weight", lambda a: a.update(qweight=a["qweight"].t()),
     r"x has K = 32 in its last dimension but qweight is \[N, K\] = \[32, 6\]"),
    ("matmul", "w_scale_wrong_length", lambda a: a.update(w_scale=a["w_scale"][:5]),
     r"w_scale must have shape \[N\] = \[6\] \(per channel\) or \[1\] \(per tensor\), got \[5\]"),
    ("matmul", "w_scale_2d", lambda a: a.update(w_scale=a["w_scale"][:, None]),
     r"w_scale must have shape \[N\] = \[6\].*got \[6, 1\]"),
    ("matmul", "w_scale_0d", lambda a: a.update(w_scale=a["w_scale"][0]),
     r"w_scale must have shape \[N\] = \[6\].*got \[\]"),
    ("matmul", "bias_wrong_length", lambda a: a.update(bias_mm=a["bias"][:4]),
     r"bias must have shape \[N\] = \[6\], got \[4\]"),
    ("matmul", "bias_2d", lambda a: a.update(bias_mm=a["bias"][None]),
     r"bias must have shape \[N\] = \[6\], got \[1, 6\]"),
    ("scaled_mm", "xq_scalar", lambda a: a.update(xq=a["xq"][0, 0]),
     r"xq must have at least 1 dimension"),
    ("scaled_mm", "qweight_1d", lambda a: a.update(qweight=a["qweight"][0]),
     r"qweight must be 2-D \[N, K\]"),
    ("scaled_mm", "K_mismatch", lambda a: a.update(xq=torch.cat([a["xq"], a["xq"][:, :1]], dim=1)),
     r"xq has K = 33 in its last dimension but qweight is \[N, K\] = \[6, 32\]"),
    ("scaled_mm", "w_scale_wrong_length", lambda a: a.update(w_scale=a["w_scale"][:2]),
     r"w_scale must have shape \[N\] = \[6\]"),
    ("scaled_mm", "bias_wrong_length", lambda a: a.update(bias_mm=torch.cat([a["bias"], a["bias"]])),
     r"bias must have shape \[N\] = \[6\], got \[12\]"),
    # K = 0
    ("quantize_weight", "K_zero", lambda a: a.update(weight=a["weight"][:, :0]),
     r"the reduction dimension K must be at least 1, got 0"),
    ("quantize_activation", "K_zero", lambda a: a.update(x=a["x"][:, :0]),
     r"the reduction dimension K must be at least 1, got 0"),
    ("matmul", "K_zero", lambda a: a.update(x=a["x"][:, :0], qweight=a["qweight"][:, :0]),
     r"the reduction dimension K must be at least 1, got 0"),
    ("matmul", "K_zero_no_rows", lambda a: a.update(x=a["x"][:0, :0], qweight=a["qweight"][:, :0]),
     r"the reduction dimension K must be at least 1, got 0"),
    ("scaled_mm", "K_zero", lambda a: a.update(xq=a["xq"][:, :0], qweight=a["qweight"][:, :0]),
     r"the reduction dimension K must be at least 1, got 0"),
    # x_smooth: float32 [K]
    ("quantize_activation", "x_smooth_float16", lambda a: a.update(x_smooth_qa=a["x_smooth"].half()),
     r"x_smooth must be float32, got Half"),
    ("quantize_activation", "x_smooth_int32", lambda a: a.update(x_smooth_qa=a["x_smooth"].int()),
     r"x_smooth must be float32, got Int"),
    ("quantize_activation", "x_smooth_too_short", lambda a: a.update(x_smooth_qa=a["x_smooth"][:31]),
     r"x_smooth must have shape \[K\] = \[32\] \(one multiplier per input channel of x\), got \[31\]"),
    ("quantize_activation", "x_smooth_2d", lambda a: a.update(x_smooth_qa=a["x_smooth"][None]),
     r"x_smooth must have shape \[K\] = \[32\].*got \[1, 32\]"),
    ("quantize_activation", "x_smooth_0d", lambda a: a.update(x_smooth_qa=a["x_smooth"][0]),
     r"x_smooth must have shape \[K\] = \[32\].*got \[\]"),
    ("quantize_activation", "x_smooth_per_row", lambda a: a.update(x_smooth_qa=a["x_smooth"].expand(M, K)),
     r"x_smooth must have shape \[K\] = \[32\].*got \[4, 32\]"),
    ("matmul", "x_smooth_float64", lambda a: a.update(x_smooth_mm=a["x_smooth"].double()),
     r"x_smooth must be float32, got Double"),
    ("matmul", "x_smooth_bfloat16", lambda a: a.update(x_smooth_mm=a["x_smooth"].bfloat16()),
     r"x_smooth must be float32, got BFloat16"),
    ("matmul", "x_smooth_too_long", lambda a: a.update(x_smooth_mm=torch.cat([a["x_smooth"], a["x_smooth"][:1]])),
     r"x_smooth must have shape \[K\] = \[32\] \(one multiplier per input channel of x\), got \[33\]"),
    ("matmul", "x_smooth_for_qweight_not_x", lambda a: a.update(x=a["x"][:, :16], qweight=a["qweight"][:, :16],
                                                                x_smooth_mm=a["x_smooth"]),
     r"x_smooth must have shape \[K\] = \[16\].*got \[32\]"),
    ("matmul", "x_smooth_2d", lambda a: a.update(x_smooth_mm=a["x_smooth"][:, None]),
     r"x_smooth must have shape \[K\] = \[32\].*got \[32, 1\]"),
]


@pytest.mark.parametrize("op,case,change,match", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input(device, op, case, change, match):
    a = _inputs(device)
    OPS[op](a)  # the valid inputs pass
    change(a)
    with pytest.raises(RuntimeError, match=rf"int8q\.{op}: {match}"):
        OPS[op](a)


# ----------------------------------------------------------------------------- K too large


def test_k_too_large(device):
    # Cheap at this size: one row of 131072 elements.
    k = MAX_K + 1
    msg = rf": K = {k} is too large for exact int32 accumulation; K must be at most {MAX_K}"
    x = torch.zeros(1, k, device=device)
    xq = torch.zeros(1, k, dtype=torch.int8, device=device)
    qweight = torch.zeros(1, k, dtype=torch.int8, device=device)
    one = torch.ones(1, device=device)
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_weight" + msg):
        ops.quantize_weight(x, True)
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_activation" + msg):
        ops.quantize_activation(x)
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_activation" + msg):
        ops.quantize_activation(x, one, one)
    with pytest.raises(RuntimeError, match=r"int8q\.matmul" + msg):
        ops.matmul(x, qweight, one)
    with pytest.raises(RuntimeError, match=r"int8q\.matmul" + msg):
        ops.matmul(x[:0], qweight, one, one)  # no rows: still rejected
    with pytest.raises(RuntimeError, match=r"int8q\.scaled_mm" + msg):
        ops.scaled_mm(xq, qweight, one, one)


def test_k_at_limit_is_accepted(device):
    k = MAX_K
    x = torch.zeros(1, k, device=device)
    qweight = torch.zeros(1, k, dtype=torch.int8, device=device)
    one = torch.ones(1, device=device)
    assert ops.quantize_weight(x, True)[0].shape == (1, k)
    assert ops.quantize_activation(x)[0].shape == (1, k)
    assert ops.matmul(x, qweight, one).tolist() == [[0.0]]
    assert ops.scaled_mm(qweight, qweight, one, one).tolist() == [[0.0]]


# ----------------------------------------------------------------------------- static values


BAD_SCALES = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", BAD_SCALES, ids=str)
def test_static_scale_must_be_finite_and_positive(device, value):
    # A CPU-resident scale is checked at the boundary, whatever x's device.
    a = _inputs(device)
    bad = torch.tensor([value])
    what = "finite" if not math.isfinite(value) else "positive"
    shown = {0.0: "-?0", -1.0: "-1"}.get(value, str(value))  # C++ prints 0, -0, -1, nan, inf, -inf
    match = rf"x_scale must be {what}, got {shown}\b"
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_activation: " + match):
        ops.quantize_activation(a["x"], bad)
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_activation: " + match):
        ops.quantize_activation(a["x"], bad, torch.zeros(1))
    with pytest.raises(RuntimeError, match=r"int8q\.matmul: " + match):
        ops.matmul(a["x"], a["qweight"], a["w_scale"], bad)
    with pytest.raises(RuntimeError, match=r"int8q\.matmul: " + match):
        ops.matmul(a["x"], a["qweight"], a["w_scale"], bad, torch.zeros(1))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=str)
def test_static_shift_must_be_finite(device, value):
    a = _inputs(device)
    bad = torch.tensor([value])
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_activation: x_shift must be finite"):
        ops.quantize_activation(a["x"], torch.ones(1), bad)
    with pytest.raises(RuntimeError, match=r"int8q\.matmul: x_shift must be finite"):
        ops.matmul(a["x"], a["qweight"], a["w_scale"], torch.ones(1), bad)


def test_static_shift_may_be_zero_or_negative(device):
    a = _inputs(device)
    for v in (0.0, -3.0):
        ops.matmul(a["x"], a["qweight"], a["w_scale"], torch.ones(1), torch.tensor([v]))


# ----------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=str)
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_quantize_weight_rejects_nonfinite(device, dtype, per_channel, value):
    w = torch.randn(4, 9).to(dtype=dtype, device=device)
    w[2, 7] = value
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_weight: weight contains NaN or Inf"):
        ops.quantize_weight(w, per_channel)


# ----------------------------------------------------------------------------- M = 0


def test_m_zero_returns_empty(device):
    a = _inputs(device)
    for lead in [(0,), (0, 5), (3, 0)]:
        x = torch.empty(*lead, K, device=device, dtype=torch.bfloat16)
        out = ops.matmul(x, a["qweight"], a["w_scale"])
        assert out.shape == (*lead, N) and out.dtype == torch.bfloat16
        out = ops.matmul(x, a["qweight"], a["w_scale"], a["x_scale"], a["x_shift"], a["bias"])
        assert out.shape == (*lead, N)
        xq, scale = ops.quantize_activation(x)
        assert xq.shape == x.shape and xq.dtype == torch.int8 and scale.shape == lead
        xq = torch.empty(*lead, K, device=device, dtype=torch.int8)
        for x_scale in (torch.empty(lead, device=device), torch.ones(1, device=device)):
            out = ops.scaled_mm(xq, a["qweight"], x_scale, a["w_scale"], a["bias"], torch.float16)
            assert out.shape == (*lead, N) and out.dtype == torch.float16


# ----------------------------------------------------------------------------- devices

_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)

# (op, tensor moved, args builder (inputs dict, move), message template: {other} is the
# moved tensor's device, {dev} the device of everything else).
DEVICE_CASES = [
    ("matmul", "qweight", lambda a, o: (a["x"], o(a["qweight"]), a["w_scale"], None, None, None),
     r"qweight is on {other} but x is on {dev}; all tensors must be on one device"),
    ("matmul", "w_scale", lambda a, o: (a["x"], a["qweight"], o(a["w_scale"]), None, None, None),
     r"w_scale is on {other} but qweight is on {dev}; all tensors must be on one device"),
    ("matmul", "bias", lambda a, o: (a["x"], a["qweight"], a["w_scale"], None, None, o(a["bias"])),
     r"bias is on {other} but qweight is on {dev}; all tensors must be on one device"),
    ("matmul", "x_scale", lambda a, o: (a["x"], a["qweight"], a["w_scale"], o(a["x_scale"]), None, None),
     r"x_scale is on {other} but x is on {dev}; it must be on x's device or on the CPU"),
    ("matmul", "x_shift", lambda a, o: (a["x"], a["qweight"], a["w_scale"], a["x_scale"], o(a["x_shift"]), None),
     r"x_shift is on {other} but x is on {dev}; it must be on x's device or on the CPU"),
    ("quantize_activation", "x_scale", lambda a, o: (a["x"], o(a["x_scale"]), None),
     r"x_scale is on {other} but x is on {dev}; it must be on x's device or on the CPU"),
    ("scaled_mm", "qweight", lambda a, o: (a["xq"], o(a["qweight"]), a["row_scale"], a["w_scale"], None, None),
     r"qweight is on {other} but xq is on {dev}; all tensors must be on one device"),
    ("scaled_mm", "x_scale", lambda a, o: (a["xq"], a["qweight"], o(a["row_scale"]), a["w_scale"], None, None),
     r"x_scale is on {other} but xq is on {dev}; all tensors must be on one device"),
    ("scaled_mm", "w_scale", lambda a, o: (a["xq"], a["qweight"], a["row_scale"], o(a["w_scale"]), None, None),
     r"w_scale is on {other} but qweight is on {dev}; all tensors must be on one device"),
    ("scaled_mm", "bias", lambda a, o: (a["xq"], a["qweight"], a["row_scale"], a["w_scale"], o(a["bias"]), None),
     r"bias is on {other} but qweight is on {dev}; all tensors must be on one device"),
    ("matmul", "x_smooth", lambda a, o: (a["x"], a["qweight"], a["w_scale"], None, None, None, o(a["x_smooth"])),
     r"x_smooth is on {other} but x is on {dev}; all tensors must be on one device"),
    ("quantize_activation", "x_smooth", lambda a, o: (a["x"], None, None, o(a["x_smooth"])),
     r"x_smooth is on {other} but x is on {dev}; all tensors must be on one device"),
    ("matmul", "w_sum", lambda a, o: (a["x"], a["qweight"], a["w_scale"], a["x_scale"], a["x_shift"], None, None,
                                      o(a["w_sum"])),
     r"w_sum is on {other} but qweight is on {dev}; all tensors must be on one device"),
]
_DEVICE_IDS = [f"{c[0]}-{c[1]}" for c in DEVICE_CASES]


@pytest.mark.parametrize("op,name,build,match", DEVICE_CASES, ids=_DEVICE_IDS)
def test_device_mismatch_cpu_kernel(op, name, build, match):
    # The dispatcher sends a CPU/meta mix to the Meta (fake) kernel, so the CPU kernel's own
    # device check is reached by redispatching to the CPU key explicitly.
    args = build(_inputs("cpu"), lambda t: t.to("meta"))
    with pytest.raises(RuntimeError, match=rf"int8q\.{op}: " + match.format(other="meta", dev="cpu")):
        getattr(ops, op).default.redispatch(_CPU, *args)


def test_device_mismatch_cpu_meta_raises():
    a = _inputs("cpu")
    with pytest.raises(RuntimeError, match=r"int8q\.matmul: qweight is on meta"):
        ops.matmul(a["x"], a["qweight"].to("meta"), a["w_scale"])


@cuda
@pytest.mark.parametrize("op,name,build,match", DEVICE_CASES, ids=_DEVICE_IDS)
def test_device_mismatch_cuda(op, name, build, match):
    # Everything on CUDA but one tensor on the CPU.
    args = build(_inputs("cuda"), lambda t: t.cpu())
    if name in ("x_scale", "x_shift") and op != "scaled_mm":
        getattr(ops, op)(*args)  # a CPU-resident static scale/shift is valid with CUDA x
        return
    with pytest.raises(RuntimeError, match=rf"int8q\.{op}: " + match.format(other="cpu", dev="cuda:0")):
        getattr(ops, op)(*args)


@cuda
def test_static_scale_on_other_cuda_device_or_x_on_cpu():
    a = _inputs("cpu")
    with pytest.raises(RuntimeError, match=r"int8q\.matmul: x_scale is on cuda:0 but x is on cpu; "
                                           r"it must be on x's device or on the CPU"):
        ops.matmul(a["x"], a["qweight"], a["w_scale"], a["x_scale"].cuda())
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_activation: x_scale is on cuda:0 but x is on cpu"):
        ops.quantize_activation(a["x"], a["x_scale"].cuda())
    if torch.cuda.device_count() < 2:
        return
    b = _inputs("cuda:0")
    with pytest.raises(RuntimeError, match=r"int8q\.matmul: x_scale is on cuda:1 but x is on cuda:0"):
        ops.matmul(b["x"], b["qweight"], b["w_scale"], b["x_scale"].to("cuda:1"))
    with pytest.raises(RuntimeError, match=r"int8q\.matmul: qweight is on cuda:1 but x is on cuda:0"):
        ops.matmul(b["x"], b["qweight"].to("cuda:1"), b["w_scale"])


def test_fixture_sanity():
    assert HAS_CUDA == torch.cuda.is_available()
    assert int8q.reference.MAX_K == MAX_K == 131071
