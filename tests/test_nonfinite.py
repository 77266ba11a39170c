"""Non-finite activations and weights: the documented policy, identical on CPU and CUDA.

- matmul: a row of x holding NaN or +-Inf gives a NaN output row in every mode (dynamic,
  static, shifted), bias or not, and never changes any other row.
- quantize_activation, dynamic: that row's scale is NaN and its codes are 0 (NaN elements
  included). Static: NaN -> 0, +-Inf saturate to +127 / -127 (-128 with a shift); the
  returned scale is the static one.
- quantize_weight: non-finite weights are an error naming the op.
"""

from __future__ import annotations

import math

import pytest
import torch

import int8q
from int8q import reference
from conftest import (
    FLOAT_DTYPES,
    MODES,
    activation,
    assert_codes_equal,
    assert_rows_close,
    assert_scales_equal,
    cuda,
    dtype_id,
    epilogue_magnitude,
    quantized_weight,
    random_bias,
    static_params,
)

VALUES = [math.nan, math.inf, -math.inf]
BAD_ROWS = (1, 4)


def _poison(x: torch.Tensor, value: float, all_bad: bool = False) -> torch.Tensor:
    """x with one element of rows 1 and 4 set to ``value`` (every element of row 4 if all_bad)."""
    x = x.clone()
    x[1, 3] = value
    if all_bad:
        x[4] = value
    else:
        x[4, -1] = value
    return x


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("value", VALUES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kn", [(37, 5), (64, 16)], ids=str)
def test_matmul_nonfinite_row_is_nan_row(device, rng, kn, dtype, mode, value, bias):
    k, n = kn
    clean = activation(rng, (6, k), dtype=dtype, device=device)
    x = _poison(clean, value)
    qweight, w_scale = quantized_weight(rng, n, k, device)
    x_scale, x_shift = static_params(mode, device)
    b = random_bias(rng, n, dtype, device) if bias else None
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b)
    for r in range(6):
        if r in BAD_ROWS:
            assert torch.isnan(out[r]).all(), f"row {r} holds {value}: its output must be all NaN"
        else:
            assert torch.isfinite(out[r]).all(), f"row {r} is finite: its output must be finite"
    # Other rows are exactly what they are without the bad rows (same M, same path).
    out_clean = int8q.matmul(clean, qweight, w_scale, x_scale, x_shift, b)
    good = [r for r in range(6) if r not in BAD_ROWS]
    assert torch.equal(out[good], out_clean[good])
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, b)
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))


@pytest.mark.parametrize("value", VALUES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_matmul_all_nonfinite_row_and_leading_dims(device, rng, mode, value):
    clean = activation(rng, (2, 3, 40), dtype=torch.float16, device=device)
    x = clean.clone()
    x[1, 2] = value
    qweight, w_scale = quantized_weight(rng, 8, 40, device)
    x_scale, x_shift = static_params(mode, device)
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
    assert torch.isnan(out[1, 2]).all()
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.isfinite(out[mask]).all()
    assert torch.equal(out[mask], int8q.matmul(clean, qweight, w_scale, x_scale, x_shift)[mask])


@pytest.mark.parametrize("value", VALUES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_quantize_activation_dynamic_nonfinite(device, rng, dtype, value):
    clean = activation(rng, (6, 33), dtype=dtype, device=device)
    x = _poison(clean, value)
    xq, scale = int8q.quantize_activation(x)
    for r in BAD_ROWS:
        assert math.isnan(scale[r].item()), f"row {r} holds {value}: its scale must be NaN"
        assert not xq[r].any(), f"row {r}: codes must all be 0 (NaN scale)"
    clean_q, clean_s = int8q.quantize_activation(clean)
    good = [r for r in range(6) if r not in BAD_ROWS]
    assert torch.equal(xq[good], clean_q[good])
    assert torch.equal(scale[good], clean_s[good])
    ref_q, ref_s = reference.quantize_activation(x)
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(scale, ref_s)


@pytest.mark.parametrize("shifted", [False, True], ids=["static", "shifted"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_quantize_activation_static_nonfinite_saturates(device, rng, dtype, shifted):
    x = activation(rng, (3, 20), dtype=dtype, device=device, special=False)
    x[0, 2], x[0, 5], x[0, 7] = math.inf, -math.inf, math.nan
    x[2, :] = -math.inf
    x_scale, x_shift = static_params("shifted" if shifted else "static", device)
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
    lo = -128 if shifted else -127
    assert xq[0, 2] == 127 and xq[0, 5] == lo and xq[0, 7] == 0
    assert (xq[2] == lo).all()
    assert_scales_equal(scale, x_scale)  # the static scale comes back unchanged
    ref_q, _ = reference.quantize_activation(x, x_scale, x_shift)
    assert_codes_equal(xq, ref_q)
    # The finite elements of the row quantize as they would without the non-finite ones.
    finite = torch.isfinite(x[0])
    xq_clean, _ = int8q.quantize_activation(torch.where(finite, x[0], torch.zeros_like(x[0]))[None], x_scale, x_shift)
    assert torch.equal(xq[0][finite], xq_clean[0][finite])


@pytest.mark.parametrize("mode", MODES)
def test_huge_finite_rows_stay_finite(device, mode):
    # Finite but extreme inputs are not "non-finite": codes saturate, outputs stay finite.
    # (Dynamic mode stays below ~1e33: the epilogue's (acc * x_scale) * w_scale order then
    # overflows float32 before w_scale brings it back, in the reference as in the kernels.)
    big = 1e30 if mode == "dynamic" else 3.0e38  # static: x / scale overflows, then saturates
    x = torch.tensor([[big, -big, 1.0, 0.0], [1e-30, -1e-30, 0.0, 1e-44]], device=device)
    qweight = torch.tensor([[1, 2, 3, 4], [-5, 6, -7, 8]], dtype=torch.int8, device=device)
    w_scale = torch.full((2,), 1e-30, device=device)
    x_scale, x_shift = static_params(mode, device)
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
    assert torch.isfinite(out).all()
    assert_rows_close(out, reference.matmul(x, qweight, w_scale, x_scale, x_shift),
                      extra=epilogue_magnitude(qweight, w_scale, x_shift))
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
    assert torch.isfinite(scale).all()


@pytest.mark.parametrize("value", VALUES, ids=str)
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_quantize_weight_rejects_nonfinite(device, value, per_channel):
    w = torch.randn(5, 17, device=device)
    w[3, 16] = value
    with pytest.raises(RuntimeError, match=r"int8q\.quantize_weight: weight contains NaN or Inf"):
        int8q.quantize_weight(w, per_channel)
    with pytest.raises(ValueError, match=r"quantize_weight: weight contains NaN or Inf"):
        reference.quantize_weight(w, per_channel)


# ----------------------------------------------------------------------------- CPU == CUDA


@cuda
@pytest.mark.parametrize("value", VALUES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("m", [1, 6, 17, 200], ids=lambda m: f"M={m}")
def test_cpu_and_cuda_identical(rng, m, dtype, mode, value):
    k, n = 48, 24
    x = activation(rng, (m, k), dtype=dtype)
    x[0, 5] = value
    if m > 6:
        x[m - 2] = value
        x[m // 2, ::7] = value
    qweight, w_scale = quantized_weight(rng, n, k)
    b = random_bias(rng, n, dtype)
    x_scale, x_shift = static_params(mode, "cpu")
    results = {}
    for dev in ("cpu", "cuda"):
        to = (lambda t: None if t is None else t.to(dev))
        q, s = int8q.quantize_activation(to(x), to(x_scale), to(x_shift))
        out = int8q.matmul(to(x), to(qweight), to(w_scale), to(x_scale), to(x_shift), to(b))
        results[dev] = (q.cpu(), s.cpu(), out.cpu())
    (q0, s0, o0), (q1, s1, o1) = results["cpu"], results["cuda"]
    assert_codes_equal(q1, q0)
    assert_scales_equal(s1, s0)
    assert torch.equal(torch.isnan(o0), torch.isnan(o1))
    assert_rows_close(o1, o0, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))


@cuda
@pytest.mark.parametrize("value", VALUES, ids=str)
def test_cpu_and_cuda_identical_scaled_mm_nan_scale(rng, value):
    # A NaN/Inf per-row scale (as dynamic quantization produces) poisons only its row.
    xq = torch.randint(-127, 128, (5, 32), generator=rng, dtype=torch.int8)
    qweight = torch.randint(-127, 128, (7, 32), generator=rng, dtype=torch.int8)
    x_scale = torch.rand(5, generator=rng) + 0.01
    x_scale[2] = value
    w_scale = torch.rand(7, generator=rng) + 0.01
    o0 = int8q.scaled_mm(xq, qweight, x_scale, w_scale, None, torch.float16)
    o1 = int8q.scaled_mm(xq.cuda(), qweight.cuda(), x_scale.cuda(), w_scale.cuda(), None, torch.float16).cpu()
    assert_rows_close(o1, o0)
    assert torch.isfinite(o1[[0, 1, 3, 4]]).all()
