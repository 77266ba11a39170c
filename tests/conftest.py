"""Shared fixtures and helpers for the int8q test suite.

- ``device``: "cpu" always, "cuda" as well (marked ``cuda``; skipped without a GPU).
- ``rng``: a torch.Generator seeded from the test's id: fresh data per test, reproducible.
- Data helpers: activations with outlier and all-zero rows, reference-quantized weights,
  static activation parameters per mode.
- Comparison helpers: ``assert_rows_close`` (tolerance relative to each row's magnitude, in
  ulps of the output dtype) and ``assert_same_nonfinite``.

Random data is always drawn on the CPU and then moved, so a test sees the same numbers on
every device.
"""

from __future__ import annotations

import zlib
from typing import Optional, Sequence, Tuple

import pytest
import torch

import int8q  # noqa: F401  (registers torch.ops.int8q)
from int8q import reference

HAS_CUDA = torch.cuda.is_available()

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MODES = ("dynamic", "static", "shifted")
MAX_K = reference.MAX_K

# Marks a test (or a parameter) that needs a GPU; pytest_collection_modifyitems skips it
# cleanly where there is none. Registered in pyproject.toml as well.
cuda = pytest.mark.cuda


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=cuda)])
def device(request) -> str:
    return request.param


@pytest.fixture
def rng(request) -> torch.Generator:
    """A CPU generator seeded from the test id: every test gets its own reproducible data."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def seeded(seed: int) -> torch.Generator:
    """A CPU generator for code that cannot take fixtures (hypothesis tests)."""
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- data


def randn(rng, shape, dtype=torch.float32, device="cpu", scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(tuple(shape), generator=rng) * scale).to(dtype=dtype, device=device)


def random_codes(rng, shape, device="cpu", lo: int = -127, hi: int = 127) -> torch.Tensor:
    """int8 codes uniform in [lo, hi]."""
    return torch.randint(lo, hi + 1, tuple(shape), generator=rng, dtype=torch.int8).to(device)


def random_scales(rng, n: int, device="cpu", lo: float = 1e-3, hi: float = 1e-1) -> torch.Tensor:
    """Positive float32 scales, log-uniform in [lo, hi]."""
    u = torch.rand(n, generator=rng, dtype=torch.float64)
    s = torch.exp(torch.log(torch.tensor(lo, dtype=torch.float64)) * (1 - u)
                  + torch.log(torch.tensor(hi, dtype=torch.float64)) * u)
    return s.float().to(device)


def add_outliers(x: torch.Tensor, rng, rows: Sequence[int], factor: float = 1000.0) -> torch.Tensor:
    """Multiply one random element of each listed row by ``factor`` (LLM-style outliers)."""
    x = x.clone()
    flat = x.view(-1, x.shape[-1])
    for r in rows:
        j = int(torch.randint(0, x.shape[-1], (1,), generator=rng))
        flat[r, j] = flat[r, j] * factor if flat[r, j] != 0 else factor
    return x


def zero_rows(x: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    x = x.clone()
    flat = x.view(-1, x.shape[-1])
    for r in rows:
        flat[r].zero_()
    return x


def special_rows(m: int) -> Tuple[list, list]:
    """(outlier rows, zero rows) for an activation of m rows: some of each once m allows."""
    outliers = [0] if m >= 2 else []
    zeros = [m - 1] if m >= 3 else []
    if m >= 8:
        outliers.append(m // 2)
    return outliers, zeros


def activation(rng, shape, dtype=torch.float32, device="cpu", special: bool = True,
               offset: float = 0.0) -> torch.Tensor:
    """Random normal activations [..., K]; with ``special``, outlier rows and a zero row."""
    x = torch.randn(tuple(shape), generator=rng) + offset
    if special and x.numel() > 0:
        m = x.numel() // x.shape[-1]
        outliers, zeros = special_rows(m)
        x = zero_rows(add_outliers(x, rng, outliers), zeros)
    return x.to(dtype=dtype, device=device)


def quantized_weight(rng, n: int, k: int, device="cpu", per_channel: bool = True,
                     zero_row: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(qweight, w_scale) from reference.quantize_weight on random normal weights."""
    w = torch.randn(n, k, generator=rng) * 0.05
    if zero_row and n >= 2:
        w[1].zero_()
    qweight, w_scale = reference.quantize_weight(w, per_channel)
    return qweight.to(device), w_scale.to(device)


def static_params(mode: str, device="cpu", scale: float = 4.0 / 127, shift: float = 0.25
                  ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(x_scale, x_shift) for a mode: None/None for dynamic, [1] float32 tensors otherwise."""
    if mode == "dynamic":
        return None, None
    x_scale = torch.tensor([scale], dtype=torch.float32, device=device)
    if mode == "static":
        return x_scale, None
    if mode == "shifted":
        return x_scale, torch.tensor([shift], dtype=torch.float32, device=device)
    raise ValueError(mode)


def random_bias(rng, n: int, dtype, device="cpu") -> torch.Tensor:
    return randn(rng, (n,), dtype=dtype, device=device)


# ----------------------------------------------------------------------------- comparison

# Allowed difference, in units of the output dtype's epsilon, relative to each row's
# magnitude. float32: the integer product is exact, only the epilogue's float rounding can
# differ (fused multiply-add, order of the additive terms): 1e-5 relative. fp16/bf16: one
# rounding of the output; two ulps allows a float32 result that differs in its last bit to
# round to the neighbouring half value.
def default_rtol(dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return 1e-5
    return 2 * torch.finfo(dtype).eps


def epilogue_magnitude(qweight: torch.Tensor, w_scale: torch.Tensor,
                       x_shift: Optional[torch.Tensor] = None,
                       bias: Optional[torch.Tensor] = None) -> float:
    """Largest additive term of the epilogue (|bias|, |shift * w_scale * sum(qweight)|).

    These can cancel the product term, so tolerances are taken relative to the row's
    magnitude plus these terms, not to the (possibly cancelled) result alone.
    """
    extra = 0.0
    if bias is not None and bias.numel():
        extra += float(bias.float().abs().max())
    if x_shift is not None and qweight.numel():
        w_sum = qweight.to(torch.int64).sum(dim=1).double().cpu()
        ws = w_scale.double().cpu().expand(w_sum.shape)
        extra += float((x_shift.double().cpu().abs() * ws.abs() * w_sum.abs()).max())
    return extra


def assert_same_nonfinite(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """NaN in the same places, +-Inf in the same places with the same sign."""
    a, e = actual.float().cpu(), expected.float().cpu()
    assert torch.equal(torch.isnan(a), torch.isnan(e)), (
        f"NaN mask differs: actual has {int(torch.isnan(a).sum())} NaN, expected {int(torch.isnan(e).sum())}"
    )
    assert torch.equal(torch.isposinf(a), torch.isposinf(e)), "+Inf positions differ"
    assert torch.equal(torch.isneginf(a), torch.isneginf(e)), "-Inf positions differ"


def assert_rows_close(actual: torch.Tensor, expected: torch.Tensor, rtol: Optional[float] = None,
                      extra: float = 0.0) -> None:
    """Compare [..., N] outputs row by row.

    Same shape, dtype and non-finite pattern; finite elements within
    ``rtol * (max_n |expected[m, n]| + extra)`` (plus the dtype's smallest subnormal).
    """
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    if actual.numel() == 0:
        return
    rtol = default_rtol(actual.dtype) if rtol is None else rtol
    assert_same_nonfinite(actual, expected)
    a = actual.double().cpu().reshape(-1, actual.shape[-1])
    e = expected.double().cpu().reshape(-1, expected.shape[-1])
    finite = torch.isfinite(e)
    a = torch.where(finite, a, torch.zeros_like(a))
    e = torch.where(finite, e, torch.zeros_like(e))
    row_mag = e.abs().amax(dim=1, keepdim=True) + extra
    floor = torch.finfo(actual.dtype).tiny * torch.finfo(actual.dtype).eps
    tol = rtol * row_mag + floor
    err = (a - e).abs()
    bad = err > tol
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        ratio = float((err / tol).max())
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} elements differ beyond rtol={rtol:g} of the row "
            f"magnitude (worst {ratio:.3g}x the tolerance); first at [row, col] = {idx}: "
            f"actual {float(a[idx[0], idx[1]])!r}, expected {float(e[idx[0], idx[1]])!r}"
        )


def assert_codes_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """int8 codes must match exactly; on mismatch report how many and where."""
    assert actual.dtype == torch.int8, f"codes must be int8, got {actual.dtype}"
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.cpu(), expected.cpu()
    if not torch.equal(a, e):
        diff = (a.int() - e.int()).abs()
        idx = (diff != 0).nonzero()[0].tolist()
        raise AssertionError(
            f"{int((diff != 0).sum())} of {diff.numel()} codes differ (max |diff| {int(diff.max())}); "
            f"first at {idx}: actual {int(a[tuple(idx)])}, expected {int(e[tuple(idx)])}"
        )


def assert_scales_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 scales must match bit for bit (NaN matching NaN)."""
    assert actual.dtype == torch.float32, f"scales must be float32, got {actual.dtype}"
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0, equal_nan=True)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
