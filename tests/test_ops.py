"""Op-level tests on every device present: opcheck and agreement with reference.py.

Codes and scales must equal the reference exactly; float outputs may differ only by the
rounding of the epilogue (see conftest.default_rtol).
"""

from __future__ import annotations

import math

import pytest
import torch

import int8q
from int8q import reference
from conftest import (
    FLOAT_DTYPES,
    MAX_K,
    MODES,
    activation,
    assert_codes_equal,
    assert_rows_close,
    assert_scales_equal,
    dtype_id,
    epilogue_magnitude,
    quantized_weight,
    random_bias,
    random_codes,
    random_scales,
    randn,
    static_params,
)

ops = torch.ops.int8q

# (M, K, N): empty, single row, odd tails in K and N, multiples of 16/8.
SHAPES = [
    (0, 16, 8),
    (1, 17, 7),
    (1, 64, 1),
    (2, 33, 3),
    (5, 100, 7),
    (16, 32, 24),
    (37, 48, 16),
]
# Leading dimensions [B, T, K].
LEADING = [((2, 3), 17, 5), ((4, 1), 32, 8), ((0, 3), 16, 4)]


def _xshape(lead, k):
    return (*lead, k) if isinstance(lead, tuple) else (lead, k)


# opcheck's autograd checks backprop through ops that (rightly) have no autograd kernel.
no_autograd_warning = pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered")


def ulp_neighbours(base, steps):
    """Rows: base, then base moved 1..steps ulps up, then 1..steps ulps down."""
    rows = [base]
    for direction in (math.inf, -math.inf):
        v = base
        for _ in range(steps):
            v = torch.nextafter(v, torch.full_like(v, direction))
            rows.append(v)
    return torch.stack(rows)


def ref_quantize_activation(x, scale=None, shift=None):
    """reference.quantize_activation, for 1-D x too (reference.py fails on 1-D static x)."""
    if x.dim() == 1 and scale is not None:
        q, s = reference.quantize_activation(x[None], scale, shift)
        return q[0], s
    return reference.quantize_activation(x, scale, shift)


# ----------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(7, 33), (1, 1), (16, 64)], ids=str)
def test_opcheck_quantize_weight(device, rng, shape, dtype, per_channel):
    # Inputs do not require grad: opcheck's autograd check sums every output, and int8 plus
    # float outputs cannot be summed into one tensor (a harness limitation).
    w = randn(rng, shape, dtype=dtype, device=device)
    torch.library.opcheck(ops.quantize_weight.default, (w, per_channel))


# smooth: x_smooth passed (random_smooth, below) or left out of the call.
SMOOTH = pytest.mark.parametrize("smooth", [False, True], ids=["nosmooth", "smooth"])


@SMOOTH
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(5, 17), (2, 3, 32), (0, 16), (16,)], ids=str)
def test_opcheck_quantize_activation(device, rng, shape, dtype, mode, smooth):
    x = activation(rng, shape, dtype=dtype, device=device)
    x_scale, x_shift = static_params(mode, device)
    extra = (random_smooth(rng, shape[-1], device),) if smooth else ()
    torch.library.opcheck(ops.quantize_activation.default, (x, x_scale, x_shift) + extra)


@no_autograd_warning
@SMOOTH
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mkn", [(5, 17, 7), ((2, 3), 32, 8), (0, 16, 4)], ids=str)
def test_opcheck_matmul(device, rng, mkn, dtype, mode, bias, smooth):
    m, k, n = mkn
    x = activation(rng, _xshape(m, k), dtype=dtype, device=device).requires_grad_()
    qweight, w_scale = quantized_weight(rng, n, k, device)
    x_scale, x_shift = static_params(mode, device)
    b = random_bias(rng, n, dtype, device) if bias else None
    extra = (random_smooth(rng, k, device),) if smooth else ()
    torch.library.opcheck(ops.matmul.default, (x, qweight, w_scale, x_scale, x_shift, b) + extra)


@no_autograd_warning
@pytest.mark.parametrize("out_dtype", [None, *FLOAT_DTYPES], ids=lambda d: "default" if d is None else dtype_id(d))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("per_row", [True, False], ids=["x_per_row", "x_per_tensor"])
@pytest.mark.parametrize("mkn", [(5, 17, 7), ((2, 3), 32, 8), (0, 16, 4)], ids=str)
def test_opcheck_scaled_mm(device, rng, mkn, per_row, bias, out_dtype):
    m, k, n = mkn
    lead = m if isinstance(m, tuple) else (m,)
    xq = random_codes(rng, (*lead, k), device)
    qweight, w_scale = quantized_weight(rng, n, k, device, per_channel=per_row)
    x_scale = random_scales(rng, xq.numel() // k if per_row else 1, device)
    if per_row:
        x_scale = x_scale.reshape(lead)
    x_scale.requires_grad_()  # the only input that can: exercises the autograd check
    b = random_bias(rng, n, torch.float32, device) if bias else None
    torch.library.opcheck(ops.scaled_mm.default, (xq, qweight, x_scale, w_scale), {"bias": b, "out_dtype": out_dtype})


@no_autograd_warning
@pytest.mark.parametrize("mkn", [(5, 17, 7), ((2, 3), 32, 8), (0, 16, 4)], ids=str)
def test_opcheck_matmul_with_w_sum(device, rng, mkn):
    m, k, n = mkn
    x = activation(rng, _xshape(m, k), dtype=torch.float16, device=device).requires_grad_()
    qweight, w_scale = quantized_weight(rng, n, k, device)
    x_scale, x_shift = static_params("shifted", device)
    w_sum = qweight.sum(1, dtype=torch.int32)
    torch.library.opcheck(ops.matmul.default, (x, qweight, w_scale, x_scale, x_shift, None, None, w_sum))


def test_opcheck_matmul_cpu_scale_with_device_input(device, rng):
    # A static scale/shift may live on the CPU whatever x's device (read without a sync).
    x = activation(rng, (4, 32), dtype=torch.float16, device=device)
    qweight, w_scale = quantized_weight(rng, 8, 32, device)
    x_scale, x_shift = static_params("shifted", "cpu")
    torch.library.opcheck(ops.matmul.default, (x, qweight, w_scale, x_scale, x_shift, None))
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift)
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift))


# ----------------------------------------------------------------------------- quantize_weight


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 1), (7, 17), (3, 100), (64, 48), (5, 4096)], ids=str)
def test_quantize_weight_matches_reference(device, rng, shape, dtype, per_channel):
    w = randn(rng, shape, dtype=dtype, device=device, scale=0.05)
    if shape[0] >= 3:
        w[1].zero_()  # an all-zero channel
        w[2, 0] = 50.0  # an outlier channel
    qweight, w_scale = int8q.quantize_weight(w, per_channel)
    ref_q, ref_s = reference.quantize_weight(w, per_channel)
    assert qweight.device == w.device and w_scale.device == w.device
    assert qweight.is_contiguous()
    assert w_scale.shape == ((shape[0],) if per_channel else (1,))
    assert_codes_equal(qweight, ref_q)
    assert_scales_equal(w_scale, ref_s)
    assert int(qweight.min()) >= -127


def test_quantize_weight_noncontiguous(device, rng):
    w = randn(rng, (40, 24), device=device).t()  # [24, 40] transposed view
    qweight, w_scale = int8q.quantize_weight(w)
    ref_q, ref_s = reference.quantize_weight(w)
    assert qweight.is_contiguous()
    assert_codes_equal(qweight, ref_q)
    assert_scales_equal(w_scale, ref_s)


def test_quantize_weight_zero_rows_get_unit_scale(device):
    w = torch.zeros(3, 17, device=device)
    w[2] = torch.linspace(-1, 1, 17)
    qweight, w_scale = int8q.quantize_weight(w)
    assert w_scale[:2].tolist() == [1.0, 1.0]
    assert not qweight[:2].any()
    qweight, w_scale = int8q.quantize_weight(torch.zeros(4, 5, device=device), per_channel=False)
    assert w_scale.tolist() == [1.0] and not qweight.any()


def test_quantize_weight_rounds_half_to_even(device):
    # absmax 127 -> scale exactly 1, so codes are round_half_even(w), clamped to +-127.
    w = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -127.0, 3.49]], device=device)
    qweight, w_scale = int8q.quantize_weight(w)
    assert w_scale.tolist() == [1.0]
    assert qweight.tolist() == [[127, 0, 2, 2, 0, -2, -2, -127, 3]]


# ----------------------------------------------------------------------------- quantize_activation


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(0, 16), (1, 17), (7, 33), (64, 100), (2, 3, 48), (5,), (3, 4096)], ids=str)
def test_quantize_activation_matches_reference(device, rng, shape, dtype, mode):
    x = activation(rng, shape, dtype=dtype, device=device, offset=0.25 if mode == "shifted" else 0.0)
    x_scale, x_shift = static_params(mode, device)
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
    ref_q, ref_s = ref_quantize_activation(x, x_scale, x_shift)
    assert xq.device == x.device and scale.device == x.device
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(scale, ref_s)
    assert scale.shape == (shape[:-1] if mode == "dynamic" else (1,))
    if xq.numel():
        assert int(xq.min()) >= (-128 if mode == "shifted" else -127)


def test_reference_accepts_1d_x_in_static_mode():
    x = torch.randn(5)
    qweight, w_scale = reference.quantize_weight(torch.randn(3, 5))
    reference.quantize_activation(x, torch.tensor([0.1]))
    reference.matmul(x, qweight, w_scale, torch.tensor([0.1]))


def test_matmul_1d_x(device, rng):
    x = randn(rng, (33,), device=device)
    qweight, w_scale = quantized_weight(rng, 6, 33, device)
    for mode in MODES:
        x_scale, x_shift = static_params(mode, device)
        out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
        ref = reference.matmul(x[None], qweight, w_scale, x_scale, x_shift)[0]
        assert out.shape == (6,)
        assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift))


def test_quantize_activation_noncontiguous(device, rng):
    base = randn(rng, (48, 10), device=device)
    for x in (base.t(), base[::2, :].t(), base.t()[:, ::3]):
        for mode in MODES:
            x_scale, x_shift = static_params(mode, device)
            xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
            ref_q, ref_s = reference.quantize_activation(x.contiguous(), x_scale, x_shift)
            assert_codes_equal(xq, ref_q)
            assert_scales_equal(scale, ref_s)


def test_quantize_activation_rounding_and_clamping(device):
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 200.0, -200.0]], device=device)
    one = torch.ones(1, device=device)
    xq, _ = int8q.quantize_activation(x, one)
    assert xq.tolist() == [[0, 2, 2, 0, -2, -2, 126, 127, -127]]
    xq, _ = int8q.quantize_activation(x, one, torch.zeros(1, device=device))
    assert xq.tolist() == [[0, 2, 2, 0, -2, -2, 126, 127, -128]]
    xq, _ = int8q.quantize_activation(x, one, torch.full((1,), 0.5, device=device))
    assert xq.tolist() == [[0, 1, 2, -1, -2, -3, 126, 127, -128]]  # round_half_even(x - 0.5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [0.1, 4.0 / 127, 1.0 / 3, 7.3e-3, 2.0**-6, 1.1e-38, 1e-40, 1e36], ids=repr)
def test_quantize_near_rounding_boundaries(device, rng, mode, scale):
    # Values within a few ulps of (j + 0.5) * scale, where a kernel that multiplies by a
    # rounded reciprocal instead of dividing can pick the other integer; tiny (subnormal) and
    # huge scales too. Codes must still equal round_half_even(x / scale) exactly.
    s = torch.tensor(scale, dtype=torch.float32)
    lo_j = -127 if mode == "dynamic" else -131  # dynamic: keep |x| below 127 * scale
    j = torch.arange(lo_j, -lo_j, dtype=torch.float32) + 0.5
    x = ulp_neighbours(j * s, 3)
    if mode == "dynamic":
        x = torch.cat([x, torch.full((x.shape[0], 1), 127.0) * s], dim=1)  # absmax -> scale ~ s
    shift = float(s * 0.25) if mode == "shifted" else None
    if shift is not None:
        x = x + shift  # x - shift lands near (not exactly on) the boundaries
    x = torch.cat([x, torch.zeros(x.shape[0], -x.shape[1] % 16)], dim=1)  # K % 16 == 0 (fast paths)
    x = x.to(device)
    x_scale = None if mode == "dynamic" else torch.tensor([scale], device=device)
    x_shift = None if shift is None else torch.tensor([shift], device=device)
    xq, x_s = int8q.quantize_activation(x, x_scale, x_shift)
    ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift)
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(x_s, ref_s)
    qweight = random_codes(rng, (9, x.shape[1]), device)
    w_scale = torch.full((9,), 1e-3, device=device)
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
    assert_rows_close(out, reference.matmul(x, qweight, w_scale, x_scale, x_shift),
                      extra=epilogue_magnitude(qweight, w_scale, x_shift))


def test_quantize_half_ties(device):
    # fp16/bf16 inputs exactly on ties (power-of-two scale): half to even.
    j = torch.arange(-100, 100, dtype=torch.float32) + 0.5
    for dtype in (torch.float16, torch.bfloat16):
        x = (j * 2.0**-6).to(dtype).to(device)[None]
        xq, _ = int8q.quantize_activation(x, torch.tensor([2.0**-6], device=device))
        ref_q, _ = reference.quantize_activation(x, torch.tensor([2.0**-6], device=device))
        assert_codes_equal(xq, ref_q)
        expected = torch.round(x.float().cpu() * 64).clamp(-127, 127).to(torch.int8)
        assert_codes_equal(xq, expected)


def test_quantize_activation_zero_row_and_scalar_scale(device):
    x = torch.zeros(2, 9, device=device)
    x[1, 3] = -2.54
    xq, scale = int8q.quantize_activation(x)
    assert scale.tolist() == [1.0, pytest.approx(0.02)]
    assert not xq[0].any() and xq[1, 3] == -127
    # A 0-dim static scale is accepted (one element) and returned as [1].
    xq, scale = int8q.quantize_activation(x, torch.tensor(0.5, device=device))
    assert scale.shape == (1,) and scale.item() == 0.5
    assert xq[1, 3] == -5


# ----------------------------------------------------------------------------- matmul


def _check_matmul(x, qweight, w_scale, x_scale, x_shift, bias):
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, bias)
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, bias)
    assert out.dtype == x.dtype and out.device == x.device
    assert out.shape == (*x.shape[:-1], qweight.shape[0])
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift, bias))
    return out


@pytest.mark.parametrize("bias", [None, "same", "float32"], ids=["nobias", "bias_same", "bias_fp32"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mkn", SHAPES + LEADING, ids=str)
def test_matmul_matches_reference(device, rng, mkn, dtype, mode, per_channel, bias):
    m, k, n = mkn
    x = activation(rng, _xshape(m, k), dtype=dtype, device=device, offset=0.25 if mode == "shifted" else 0.0)
    qweight, w_scale = quantized_weight(rng, n, k, device, per_channel=per_channel, zero_row=True)
    x_scale, x_shift = static_params(mode, device)
    b = None if bias is None else random_bias(rng, n, dtype if bias == "same" else torch.float32, device)
    _check_matmul(x, qweight, w_scale, x_scale, x_shift, b)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mkn", [(1, 64, 24), (3, 40, 7), (17, 4096, 136), (300, 256, 520)], ids=str)
def test_matmul_given_w_sum_equals_computed(device, rng, mkn, dtype):
    # w_sum passed in replaces the per-call pass over the weights: same bits. A different
    # w_sum changes the shift term as reference.py says (it is used as given).
    m, k, n = mkn
    x = activation(rng, (m, k), dtype=dtype, device=device, offset=0.25)
    qweight, w_scale = quantized_weight(rng, n, k, device, zero_row=True)
    x_scale, x_shift = static_params("shifted", device)
    b = random_bias(rng, n, dtype, device)
    w_sum = qweight.sum(1, dtype=torch.int32)
    computed = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b)
    given = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b, w_sum=w_sum)
    assert torch.equal(given, computed)
    other = w_sum + 1000 * torch.arange(1, n + 1, dtype=torch.int32, device=device)
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b, w_sum=other)
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, b, w_sum=other)
    shift_term = (x_shift.double() * w_scale.double() * other.double()).abs().max()
    assert_rows_close(out, ref, extra=float(shift_term) + float(b.float().abs().max()))
    assert not torch.equal(out, computed)


@pytest.mark.parametrize("mode", MODES)
def test_matmul_m0_returns_empty(device, rng, mode):
    qweight, w_scale = quantized_weight(rng, 6, 16, device)
    x_scale, x_shift = static_params(mode, device)
    for shape in [(0, 16), (0, 3, 16), (2, 0, 16)]:
        out = int8q.matmul(torch.empty(shape, device=device, dtype=torch.float16), qweight, w_scale, x_scale, x_shift)
        assert out.shape == (*shape[:-1], 6) and out.dtype == torch.float16 and out.device.type == device


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_noncontiguous_x(device, rng, dtype, mode):
    qweight, w_scale = quantized_weight(rng, 7, 40, device)
    x_scale, x_shift = static_params(mode, device)
    b = random_bias(rng, 7, dtype, device)
    base = randn(rng, (40, 12), dtype=dtype, device=device)
    big = randn(rng, (3, 9, 80), dtype=dtype, device=device)
    views = {
        "transposed": base.t(),  # [12, 40], stride (1, 12)
        "row_sliced": base.t()[::2],  # every other row
        "col_sliced": big[:, :, ::2],  # stride 2 along K
        "permuted": big[:, :, :40].permute(1, 0, 2),  # [9, 3, 40]
        "expanded": base[:, 0].expand(5, 40),  # stride 0 rows
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        out = _check_matmul(x, qweight, w_scale, x_scale, x_shift, b)
        dense = int8q.matmul(x.contiguous(), qweight, w_scale, x_scale, x_shift, b)
        assert torch.equal(out, dense), f"{name}: non-contiguous x changed the result"


def test_matmul_noncontiguous_weight_and_scales(device, rng):
    qweight, w_scale = quantized_weight(rng, 24, 33, device)
    qweight_t = qweight.t().contiguous().t()  # same values, column-major
    w_scale_strided = torch.stack([w_scale, w_scale], dim=1)[:, 0]  # stride 2
    x = activation(rng, (6, 33), device=device)
    b = random_bias(rng, 48, torch.float32, device)[::2]
    assert not qweight_t.is_contiguous() and not w_scale_strided.is_contiguous() and not b.is_contiguous()
    out = _check_matmul(x, qweight_t, w_scale_strided, None, None, b)
    assert torch.equal(out, int8q.matmul(x, qweight, w_scale, None, None, b.contiguous()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_large_k(device, rng, dtype, mode):
    x = activation(rng, (3, 4096), dtype=dtype, device=device)
    qweight, w_scale = quantized_weight(rng, 16, 4096, device)
    x_scale, x_shift = static_params(mode, device)
    _check_matmul(x, qweight, w_scale, x_scale, x_shift, random_bias(rng, 16, dtype, device))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_equals_quantize_then_scaled_mm(device, rng, dtype):
    # The fused op is the composition of its parts (dynamic and static).
    x = activation(rng, (2, 5, 48), dtype=dtype, device=device)
    qweight, w_scale = quantized_weight(rng, 24, 48, device)
    b = random_bias(rng, 24, dtype, device)
    for mode in ("dynamic", "static"):
        x_scale, _ = static_params(mode, device)
        out = int8q.matmul(x, qweight, w_scale, x_scale, None, b)
        xq, scale = int8q.quantize_activation(x, x_scale)
        composed = int8q.scaled_mm(xq, qweight, scale, w_scale, b, dtype)
        assert_rows_close(out, composed, extra=epilogue_magnitude(qweight, w_scale, None, b))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_zero_rows_give_bias(device, rng, dtype):
    x = activation(rng, (6, 40), dtype=dtype, device=device, special=False)
    x[1].zero_()
    x[4].zero_()
    qweight, w_scale = quantized_weight(rng, 9, 40, device)
    b = random_bias(rng, 9, dtype, device)
    for mode in ("dynamic", "static"):
        x_scale, _ = static_params(mode, device)
        out = int8q.matmul(x, qweight, w_scale, x_scale, None, b)
        for r in (1, 4):
            assert torch.equal(out[r], b), f"{mode}: a zero row must give exactly the bias"
        out = int8q.matmul(x, qweight, w_scale, x_scale, None, None)
        assert not out[1].any() and not out[4].any()
    xq, scale = int8q.quantize_activation(x)
    assert scale[1].item() == 1.0 and scale[4].item() == 1.0
    assert not xq[1].any() and not xq[4].any()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_outlier_rows(device, rng, dtype, mode):
    x = activation(rng, (8, 64), dtype=dtype, device=device, special=False)
    x[2, 5] = 1000.0 * (1 + abs(float(x[2, 5])))
    x[6, 60] = -1000.0 * (1 + abs(float(x[6, 60])))
    qweight, w_scale = quantized_weight(rng, 16, 64, device)
    x_scale, x_shift = static_params(mode, device)
    out = _check_matmul(x, qweight, w_scale, x_scale, x_shift, None)
    xq, _ = int8q.quantize_activation(x, x_scale, x_shift)
    assert xq[2, 5] == 127
    assert xq[6, 60] == (-128 if mode == "shifted" else -127)
    # Rows are quantized independently: the other rows are what they are without the outliers.
    keep = [0, 1, 3, 4, 5, 7]
    alone = int8q.matmul(x[keep], qweight, w_scale, x_scale, x_shift, None)
    assert_rows_close(out[keep], alone, rtol=0 if device == "cpu" else None,
                      extra=epilogue_magnitude(qweight, w_scale, x_shift))


def test_matmul_close_to_float_linear(device, rng):
    # Sanity of the whole scheme, not just agreement with the reference: W8A8 with dynamic
    # per-token activations is within ~1% of the float product on random normal data.
    w = randn(rng, (64, 256), device=device, scale=0.05)
    x = randn(rng, (32, 256), device=device)
    qweight, w_scale = int8q.quantize_weight(w)
    out = int8q.matmul(x, qweight, w_scale)
    exact = x.double() @ w.double().t()
    rel = float((out.double() - exact).norm() / exact.norm())
    assert rel < 0.01, rel


# ----------------------------------------------------------------------------- scaled_mm


@pytest.mark.parametrize("bias", [None, *FLOAT_DTYPES], ids=lambda d: "nobias" if d is None else "bias_" + dtype_id(d))
@pytest.mark.parametrize("out_dtype", [None, *FLOAT_DTYPES], ids=lambda d: "default" if d is None else dtype_id(d))
@pytest.mark.parametrize("scales", ["row_channel", "tensor_tensor", "row_tensor", "tensor_channel"])
@pytest.mark.parametrize("mkn", SHAPES + LEADING, ids=str)
def test_scaled_mm_matches_reference(device, rng, mkn, scales, out_dtype, bias):
    m, k, n = mkn
    lead = m if isinstance(m, tuple) else (m,)
    xq = random_codes(rng, (*lead, k), device, lo=-128)
    qweight = random_codes(rng, (n, k), device)
    x_per_row, w_per_channel = scales.split("_")[0] == "row", scales.endswith("channel")
    x_scale = random_scales(rng, xq.numel() // k if x_per_row else 1, device)
    if x_per_row:
        x_scale = x_scale.reshape(lead)
    w_scale = random_scales(rng, n if w_per_channel else 1, device)
    b = None if bias is None else random_bias(rng, n, bias, device)
    out = int8q.scaled_mm(xq, qweight, x_scale, w_scale, b, out_dtype)
    ref = reference.scaled_mm(xq, qweight, x_scale, w_scale, b, out_dtype)
    assert out.dtype == (out_dtype or torch.float32) and out.device == xq.device
    assert out.shape == (*lead, n)
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, None, b))


def test_scaled_mm_noncontiguous(device, rng):
    xq = random_codes(rng, (40, 10), device, lo=-128).t()  # [10, 40]
    qweight = random_codes(rng, (40, 12), device).t()  # [12, 40]
    x_scale = random_scales(rng, 20, device)[::2]
    w_scale = random_scales(rng, 12, device)
    out = int8q.scaled_mm(xq, qweight, x_scale, w_scale)
    ref = reference.scaled_mm(xq, qweight, x_scale, w_scale)
    assert_rows_close(out, ref)
    assert torch.equal(out, int8q.scaled_mm(xq.contiguous(), qweight.contiguous(), x_scale.contiguous(), w_scale))


@pytest.mark.parametrize("mk", [(1, 1), (3, 17), (8, 100), (16, 1024), (5, 4096), (2, 4097)], ids=str)
def test_scaled_mm_unit_scales_is_exact_integer_product(device, rng, mk):
    m, k = mk
    xq = random_codes(rng, (m, k), device, lo=-128)
    qweight = random_codes(rng, (11, k), device, lo=-128)
    ones_m, ones_n = torch.ones(m, device=device), torch.ones(11, device=device)
    out = int8q.scaled_mm(xq, qweight, ones_m, ones_n)
    exact = xq.cpu().long() @ qweight.cpu().long().t()
    assert out.dtype == torch.float32
    # int32 -> float32 rounds to nearest exactly like int64 -> float32 (exact below 2**24).
    assert torch.equal(out.cpu(), exact.float())


# ----------------------------------------------------------------------------- overflow bound


@pytest.mark.parametrize("k", [MAX_K, MAX_K - 15], ids=["K=131071", "K=131056"])
@pytest.mark.parametrize("a,b", [(127, 127), (-127, 127), (-128, -127), (-128, -128), (127, -128)],
                         ids=lambda v: str(v))
def test_scaled_mm_worst_case_at_max_k(device, k, a, b):
    xq = torch.full((2, k), a, dtype=torch.int8, device=device)
    qweight = torch.full((2, k), b, dtype=torch.int8, device=device)
    out = int8q.scaled_mm(xq, qweight, torch.ones(1, device=device), torch.ones(1, device=device))
    exact = a * b * k
    assert abs(exact) < 2**31
    assert out.cpu().tolist() == [[float(torch.tensor(exact).float())] * 2] * 2, (
        "int32 accumulation overflowed or lost precision at the largest allowed K"
    )


@pytest.mark.parametrize("k", [MAX_K, MAX_K - 15], ids=["K=131071", "K=131056"])
def test_matmul_worst_case_at_max_k(device, k):
    # Dynamic: x all ones -> codes 127; weights all 127 (scale 1).
    x = torch.ones(2, k, device=device)
    x[1] = -1.0
    qweight = torch.full((2, k), 127, dtype=torch.int8, device=device)
    w_scale = torch.ones(2, device=device)
    out = int8q.matmul(x, qweight, w_scale)
    assert_rows_close(out, reference.matmul(x, qweight, w_scale))
    assert out[0, 0].item() == pytest.approx(127.0 * k, rel=1e-6)
    assert out[1, 0].item() == pytest.approx(-127.0 * k, rel=1e-6)
    # Shifted static: x far below the range -> codes -128, weights -127: acc = 16256 * K.
    x = torch.full((2, k), -1000.0, device=device)
    qweight = torch.full((2, k), -127, dtype=torch.int8, device=device)
    for shift in (0.0, 0.5):
        x_scale, x_shift = torch.ones(1, device=device), torch.full((1,), shift, device=device)
        xq, _ = int8q.quantize_activation(x, x_scale, x_shift)
        assert int(xq.min()) == -128 and int(xq.max()) == -128
        out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
        ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift)
        assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift))
        expected = 16256.0 * k - shift * 127.0 * k
        assert out[0, 0].item() == pytest.approx(expected, rel=1e-6)
    # Static symmetric at the bound: codes -127.
    xq, _ = int8q.quantize_activation(x, x_scale)
    assert int(xq.min()) == -127


# ----------------------------------------------------------------------------- x_smooth

# The per-input-channel multiplier (SmoothQuant's 1/s): the op quantizes x' = x * x_smooth
# (one float32 multiply per element), and every rule (absmax, static scale and shift, the
# NaN-row rule) applies to x'.


def random_smooth(rng, k, device="cpu", lo=0.05, hi=20.0) -> torch.Tensor:
    """Positive float32 multipliers, log-uniform in [lo, hi]: some shrink, some grow channels."""
    return random_scales(rng, k, device, lo=lo, hi=hi)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(0, 16), (1, 17), (7, 33), (64, 100), (2, 3, 48), (5,), (3, 4096), (2, 24576)],
                         ids=str)
def test_quantize_activation_smooth_matches_reference(device, rng, shape, dtype, mode):
    # (2, 24576): fp16/bf16 rows longer than the smoothing kernel keeps in registers.
    x = activation(rng, shape, dtype=dtype, device=device, offset=0.25 if mode == "shifted" else 0.0)
    x_scale, x_shift = static_params(mode, device)
    smooth = random_smooth(rng, shape[-1], device)
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift, smooth)
    if len(shape) == 1 and x_scale is not None:
        ref_q, ref_s = reference.quantize_activation(x[None], x_scale, x_shift, smooth)
        ref_q = ref_q[0]
    else:
        ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift, smooth)
    assert xq.device == x.device and scale.device == x.device
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(scale, ref_s)
    assert scale.shape == (shape[:-1] if mode == "dynamic" else (1,))
    if mode == "dynamic" and x.numel():
        # The scale comes from x * smooth, not from x.
        plain_scale = int8q.quantize_activation(x)[1]
        assert not torch.equal(scale, plain_scale)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_quantize_activation_smooth_equals_quantizing_the_product(device, rng, dtype, mode):
    # x * smooth is one rounded float32 multiply: quantizing the product computed by torch
    # gives the same codes and scales.
    x = activation(rng, (9, 64), dtype=dtype, device=device)
    x_scale, x_shift = static_params(mode, device)
    smooth = random_smooth(rng, 64, device)
    product = x.float() * smooth
    for got, want in zip(int8q.quantize_activation(x, x_scale, x_shift, smooth),
                         int8q.quantize_activation(product, x_scale, x_shift)):
        assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("mode", MODES)
def test_quantize_activation_smooth_near_rounding_boundaries(device, mode):
    # x' = x * smooth lands within a few ulps of (j + 0.5) * scale: the fast path and its
    # exact fix-up must both see the same rounded product as reference.py.
    scale = 4.0 / 127
    j = torch.arange(-127, 127, dtype=torch.float64) + 0.5
    smooth = torch.tensor([1 / 3, 0.7, 3.1, 2.0 ** -3]).repeat(64)[: j.numel()].float()
    x = ulp_neighbours((j * scale / smooth.double()).float(), 2)
    if mode == "dynamic":  # a column that sets absmax(x') = 127 * scale
        x = torch.cat([x, torch.full((x.shape[0], 1), 127 * scale)], dim=1)
        smooth = torch.cat([smooth, torch.ones(1)])
    pad = -x.shape[1] % 16  # K % 16 == 0: the vector paths
    x = torch.cat([x, torch.zeros(x.shape[0], pad)], dim=1).to(device)
    smooth = torch.cat([smooth, torch.ones(pad)]).to(device)
    x_scale, x_shift = static_params(mode, device, scale=scale, shift=0.0)
    xq, xs = int8q.quantize_activation(x, x_scale, x_shift, smooth)
    ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift, smooth)
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(xs, ref_s)


def test_quantize_activation_smooth_strided_and_misaligned(device, rng):
    # A non-contiguous x_smooth, and one whose data does not start 16-byte aligned (the
    # vector path needs it aligned; the kernel falls back to scalar loads).
    x = activation(rng, (6, 64), dtype=torch.float16, device=device)
    wide = random_smooth(rng, 129, device)
    for smooth in (wide[:128:2], wide[1:65]):
        assert smooth.shape == (64,)
        for mode in MODES:
            x_scale, x_shift = static_params(mode, device)
            xq, xs = int8q.quantize_activation(x, x_scale, x_shift, smooth)
            ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift, smooth)
            assert_codes_equal(xq, ref_q)
            assert_scales_equal(xs, ref_s)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mkn", [(1, 17, 7), (1, 64, 16), (4, 256, 24), (16, 128, 40), (37, 48, 16), ((2, 3), 32, 8),
                                 (64, 4096, 16)], ids=str)
def test_matmul_smooth_matches_reference(device, rng, mkn, dtype, mode):
    # Small M included: on CUDA x_smooth bypasses the fused small-M kernel.
    m, k, n = mkn
    x = activation(rng, _xshape(m, k), dtype=dtype, device=device, offset=0.25 if mode == "shifted" else 0.0)
    qweight, w_scale = quantized_weight(rng, n, k, device, zero_row=True)
    x_scale, x_shift = static_params(mode, device)
    b = random_bias(rng, n, dtype, device)
    smooth = random_smooth(rng, k, device)
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b, smooth)
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, b, smooth)
    assert out.dtype == x.dtype and out.device == x.device and out.shape == (*x.shape[:-1], n)
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))
    # The fused op is still the composition of its parts.
    xq, xs = int8q.quantize_activation(x, x_scale, x_shift, smooth)
    ref_q, _ = reference.quantize_activation(x, x_scale, x_shift, smooth)
    assert_codes_equal(xq, ref_q)


def test_matmul_all_ones_smooth_is_no_smoothing(device, rng):
    x = activation(rng, (5, 48), dtype=torch.float16, device=device)
    qweight, w_scale = quantized_weight(rng, 8, 48, device)
    ones = torch.ones(48, device=device)
    for mode in MODES:
        x_scale, x_shift = static_params(mode, device)
        assert_rows_close(int8q.matmul(x, qweight, w_scale, x_scale, x_shift, None, ones),
                          int8q.matmul(x, qweight, w_scale, x_scale, x_shift),
                          extra=epilogue_magnitude(qweight, w_scale, x_shift))


def test_matmul_smooth_recovers_float_linear(device, rng):
    # SmoothQuant's identity: (x * m) @ (W / m).T == x @ W.T. With outlier channels, smoothing
    # them away makes the static per-tensor result much closer to the float product.
    k = 256
    x = randn(rng, (32, k))
    x[:, :4] *= 60.0  # outlier channels
    w = randn(rng, (48, k), scale=0.05)
    exact = x.double() @ w.double().t()
    s = (x.abs().amax(dim=0) ** 0.8 / w.abs().amax(dim=0) ** 0.2).float()
    smooth = 1.0 / s

    def rel(out):
        return float((out.double().cpu() - exact).norm() / exact.norm())

    qweight, w_scale = int8q.quantize_weight(w.to(device))
    plain = int8q.matmul(x.to(device), qweight, w_scale, (x.abs().max() / 127).reshape(1).to(device))
    qweight_s, w_scale_s = int8q.quantize_weight((w * s).to(device))
    smoothed_scale = ((x * smooth).abs().max() / 127).reshape(1).to(device)
    smoothed = int8q.matmul(x.to(device), qweight_s, w_scale_s, smoothed_scale, None, None, smooth.to(device))
    assert rel(smoothed) < 0.02
    assert rel(smoothed) < 0.5 * rel(plain)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_matmul_smooth_nonfinite_rows(device, rng, dtype, mode):
    # Rows whose product x * smooth is not finite give NaN output rows, nothing else changes:
    # a NaN in x, an Inf in x, and a finite x that overflows once multiplied.
    k, n = 64, 16
    x = activation(rng, (8, k), dtype=torch.float32, special=False)
    big = torch.finfo(dtype).max
    x[1, 3] = math.nan
    x[4, 10] = math.inf
    x[:, 20] = 0.0  # channel 20 gets a huge multiplier: only row 6 uses it
    x[6, 20] = big  # finite in x, Inf in x' below
    x = x.to(dtype)
    smooth = random_smooth(rng, k, lo=0.5, hi=2.0)
    smooth[20] = 2.0 * torch.finfo(torch.float32).max / big
    smooth = smooth.to(device)
    x = x.to(device)
    assert torch.isfinite(x[6]).all() and not torch.isfinite(x[6].float() * smooth).all()
    qweight, w_scale = quantized_weight(rng, n, k, device)
    x_scale, x_shift = static_params(mode, device)
    b = random_bias(rng, n, dtype, device)
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b, smooth)
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, b, smooth)
    bad = [1, 4, 6]
    assert torch.isnan(out[bad]).all()
    good = [r for r in range(8) if r not in bad]
    assert torch.isfinite(out[good]).all()
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))
    alone = int8q.matmul(x[good], qweight, w_scale, x_scale, x_shift, b, smooth)
    assert_rows_close(out[good], alone, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))
    _, scale = int8q.quantize_activation(x, x_scale, x_shift, smooth)
    if mode == "dynamic":
        assert torch.isnan(scale[bad]).all() and torch.isfinite(scale[good]).all()


@pytest.mark.parametrize("mode", MODES)
def test_smooth_m0_returns_empty(device, rng, mode):
    qweight, w_scale = quantized_weight(rng, 6, 16, device)
    x_scale, x_shift = static_params(mode, device)
    smooth = random_smooth(rng, 16, device)
    for shape in [(0, 16), (0, 3, 16), (2, 0, 16)]:
        x = torch.empty(shape, device=device, dtype=torch.bfloat16)
        out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, None, smooth)
        assert out.shape == (*shape[:-1], 6) and out.dtype == torch.bfloat16 and out.device.type == device
        xq, scale = int8q.quantize_activation(x, x_scale, x_shift, smooth)
        assert xq.shape == shape and xq.dtype == torch.int8
        assert scale.shape == (shape[:-1] if mode == "dynamic" else (1,))
