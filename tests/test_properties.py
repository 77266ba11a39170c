"""Property-based tests (hypothesis, CPU): random shapes, dtypes, scales and shifts, every op
against reference.py. Codes and scales exactly; float outputs within conftest's tolerance.

Shapes: M in 0..300 (sometimes as [B, T] leading dims), K in 1..300 and N in 1..100, so
non-multiples of 16 and 8 are the common case.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import int8q
from int8q import reference
from conftest import (
    FLOAT_DTYPES,
    MODES,
    add_outliers,
    assert_codes_equal,
    assert_rows_close,
    assert_scales_equal,
    epilogue_magnitude,
    seeded,
    zero_rows,
)

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,  # nothing written into the checkout; failures print a reproduction blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from(FLOAT_DTYPES)
ks = st.one_of(st.integers(1, 300), st.sampled_from([1, 15, 16, 17, 31, 32, 33, 64, 255, 256, 257]))
ns = st.one_of(st.integers(1, 100), st.sampled_from([1, 7, 8, 9, 16, 63, 64]))
ms = st.one_of(st.integers(0, 300), st.sampled_from([0, 1, 2, 15, 16, 17, 64, 65]))
log_mags = st.floats(-3.0, 0.7)  # data magnitude 10**x: 1e-3 .. 5 (outliers x1000 stay fp16-finite)


@st.composite
def leading_dims(draw):
    """[M] or [B, T] with B * T = M."""
    m = draw(ms)
    if m > 0 and draw(st.booleans()):
        divisors = [d for d in range(1, min(m, 20) + 1) if m % d == 0]
        b = draw(st.sampled_from(divisors))
        return (b, m // b)
    return (m,)


def _activations(seed, lead, k, dtype, log_mag, outliers, zeros, offset=0.0):
    g = seeded(seed)
    x = torch.randn(*lead, k, generator=g) * (10.0 ** log_mag) + offset
    m = x.numel() // k
    if m and outliers:
        rows = torch.randint(0, m, (max(1, m // 8),), generator=g).tolist()
        x = add_outliers(x, g, rows)
    if m and zeros:
        x = zero_rows(x, torch.randint(0, m, (max(1, m // 16),), generator=g).tolist())
    return x.to(dtype)


def _static(mode, log_mag, scale_factor, shift_factor):
    if mode == "dynamic":
        return None, None
    mag = 10.0 ** log_mag
    x_scale = torch.tensor([mag * scale_factor / 127.0], dtype=torch.float32)
    x_shift = torch.tensor([mag * shift_factor], dtype=torch.float32) if mode == "shifted" else None
    return x_scale, x_shift


def _weights(seed, n, k, per_channel):
    w = torch.randn(n, k, generator=seeded(seed + 1)) * 0.05
    return reference.quantize_weight(w, per_channel)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 100), k=ks, dtype=dtypes, per_channel=st.booleans(),
       log_mag=st.floats(-6.0, 3.0), zero=st.booleans(), transposed=st.booleans())
def test_quantize_weight_property(seed, n, k, dtype, per_channel, log_mag, zero, transposed):
    g = seeded(seed)
    if transposed:
        w = (torch.randn(k, n, generator=g) * 10.0 ** log_mag).to(dtype).t()
    else:
        w = (torch.randn(n, k, generator=g) * 10.0 ** log_mag).to(dtype)
    if zero:
        w[torch.randint(0, n, (1,), generator=g)] = 0
    qweight, w_scale = int8q.quantize_weight(w, per_channel)
    ref_q, ref_s = reference.quantize_weight(w, per_channel)
    assert_codes_equal(qweight, ref_q)
    assert_scales_equal(w_scale, ref_s)


@SETTINGS
@given(seed=seeds, lead=leading_dims(), k=ks, dtype=dtypes, mode=st.sampled_from(MODES),
       log_mag=log_mags, scale_factor=st.floats(0.05, 20.0), shift_factor=st.floats(-3.0, 3.0),
       outliers=st.booleans(), zeros=st.booleans())
def test_quantize_activation_property(seed, lead, k, dtype, mode, log_mag, scale_factor, shift_factor,
                                      outliers, zeros):
    x = _activations(seed, lead, k, dtype, log_mag, outliers, zeros)
    x_scale, x_shift = _static(mode, log_mag, scale_factor, shift_factor)
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
    ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift)
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(scale, ref_s)


@SETTINGS
@given(seed=seeds, lead=leading_dims(), k=ks, n=ns, dtype=dtypes, mode=st.sampled_from(MODES),
       per_channel=st.booleans(), bias=st.sampled_from([None, "same", torch.float32]),
       log_mag=log_mags, scale_factor=st.floats(0.05, 20.0), shift_factor=st.floats(-3.0, 3.0),
       outliers=st.booleans(), zeros=st.booleans(), noncontiguous=st.booleans())
def test_matmul_property(seed, lead, k, n, dtype, mode, per_channel, bias, log_mag, scale_factor,
                         shift_factor, outliers, zeros, noncontiguous):
    x = _activations(seed, lead, k, dtype, log_mag, outliers, zeros,
                     offset=shift_factor * 10.0 ** log_mag if mode == "shifted" else 0.0)
    if noncontiguous:
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, K not innermost
    qweight, w_scale = _weights(seed, n, k, per_channel)
    x_scale, x_shift = _static(mode, log_mag, scale_factor, shift_factor)
    b = None
    if bias is not None:
        b = torch.randn(n, generator=seeded(seed + 2)).to(dtype if bias == "same" else bias)
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b)
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, b)
    assert out.shape == (*lead, n) and out.dtype == dtype
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))


@SETTINGS
@given(seed=seeds, lead=leading_dims(), k=ks, n=ns, x_per_row=st.booleans(), w_per_channel=st.booleans(),
       out_dtype=st.sampled_from([None, *FLOAT_DTYPES]), bias=st.sampled_from([None, *FLOAT_DTYPES]),
       log_scale=st.floats(-8.0, 2.0))
def test_scaled_mm_property(seed, lead, k, n, x_per_row, w_per_channel, out_dtype, bias, log_scale):
    g = seeded(seed)
    xq = torch.randint(-128, 128, (*lead, k), generator=g, dtype=torch.int8)
    qweight = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    m = xq.numel() // k
    x_scale = torch.rand(lead if x_per_row else (1,), generator=g) * 10.0 ** log_scale + 1e-30
    w_scale = torch.rand(n if w_per_channel else 1, generator=g) * 0.01 + 1e-6
    b = None if bias is None else torch.randn(n, generator=g).to(bias)
    out = int8q.scaled_mm(xq, qweight, x_scale, w_scale, b, out_dtype)
    ref = reference.scaled_mm(xq, qweight, x_scale, w_scale, b, out_dtype)
    assert out.shape == (*lead, n) and out.dtype == (out_dtype or torch.float32)
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, None, b))
    # Unit scales: the exact integer product (|acc| <= 300 * 128 * 128 < 2**24, exact in float32).
    ones = torch.ones(m if x_per_row else 1).reshape(lead if x_per_row else (1,))
    exact = int8q.scaled_mm(xq, qweight, ones, torch.ones(1))
    assert torch.equal(exact, (xq.reshape(-1, k).long() @ qweight.long().t()).float().reshape(*lead, n))

