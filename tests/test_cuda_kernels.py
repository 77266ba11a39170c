"""The CUDA kernels against reference.py on the GPU (every test here is skipped without one).

The reference runs on the same GPU from the same inputs. Its integer part is exact, so the
kernels may differ only in the rounding of the epilogue and of the output dtype
(conftest.default_rtol, relative to each row's magnitude); activation codes and scales must
be exactly equal. Covers the dispatch paths of csrc/cuda/ops_cuda.cu: the fused small-M
kernel, quantize + tensor-core GEMM for larger M, and the generic fallback (K % 16 != 0 or
misaligned pointers).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import int8q
from int8q import reference
from conftest import (
    MAX_K,
    MODES,
    add_outliers,
    assert_codes_equal,
    assert_rows_close,
    assert_scales_equal,
    cuda,
    dtype_id,
    epilogue_magnitude,
    special_rows,
    static_params,
    zero_rows,
)

pytestmark = cuda

DEV = "cuda"
HALF_DTYPES = (torch.float16, torch.bfloat16)
M_ALL = [1, 2, 3, 7, 16, 17, 64, 127, 128, 1000, 4096]
# (K, N): tails in both (generic path when K % 16 != 0), aligned shapes, one LLM layer.
KN_ALL = [(16, 8), (17, 7), (33, 1), (100, 3), (256, 72), (1000, 513), (4096, 4096)]
# The big LLM projections, for a subset of M.
KN_LLM = [(4096, 14336), (14336, 4096)]
M_LLM = [1, 16, 17, 128, 4096]


def _seed(rng) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=rng))


def gpu_activation(rng, shape, dtype, special=True, offset=0.0) -> torch.Tensor:
    """Random normal [..., K] drawn on the GPU; outlier rows and a zero row with ``special``."""
    g = torch.Generator(device=DEV).manual_seed(_seed(rng))
    x = torch.randn(tuple(shape), generator=g, device=DEV) + offset
    if special and x.numel():
        outliers, zeros = special_rows(x.numel() // x.shape[-1])
        x = zero_rows(add_outliers(x, rng, outliers), zeros)
    return x.to(dtype)


@functools.lru_cache(maxsize=8)
def gpu_weight(n: int, k: int, per_channel: bool = True):
    """(qweight, w_scale) from reference.quantize_weight on the GPU; cached across tests."""
    g = torch.Generator(device=DEV).manual_seed(n * 100003 + k)
    w = torch.randn(n, k, generator=g, device=DEV) * 0.05
    if n >= 2:
        w[1].zero_()  # an all-zero channel
    return reference.quantize_weight(w, per_channel)


def gpu_bias(rng, n, dtype):
    g = torch.Generator(device=DEV).manual_seed(_seed(rng))
    return torch.randn(n, generator=g, device=DEV).to(dtype)


def check_matmul(x, qweight, w_scale, x_scale=None, x_shift=None, bias=None, rtol=None):
    """matmul against the reference, and quantize_activation codes/scales exactly."""
    out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, bias)
    ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, bias)
    assert out.device == x.device and out.dtype == x.dtype
    assert_rows_close(out, ref, rtol=rtol, extra=epilogue_magnitude(qweight, w_scale, x_shift, bias))
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
    ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift)
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(scale, ref_s)
    return out, ref


def _mode_params(mode):
    return static_params(mode, DEV)


def _offset(mode):
    return 0.25 if mode == "shifted" else 0.0


# ----------------------------------------------------------------------------- every mode x M x shape


@pytest.mark.parametrize("kn", KN_ALL, ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("m", M_ALL, ids=lambda m: f"M={m}")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_matmul_vs_reference(rng, mode, dtype, m, kn):
    k, n = kn
    x = gpu_activation(rng, (m, k), dtype, offset=_offset(mode))
    qweight, w_scale = gpu_weight(n, k)
    x_scale, x_shift = _mode_params(mode)
    check_matmul(x, qweight, w_scale, x_scale, x_shift, gpu_bias(rng, n, dtype))


@pytest.mark.parametrize("kn", KN_LLM, ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("m", M_LLM, ids=lambda m: f"M={m}")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_matmul_vs_reference_llm_shapes(rng, mode, dtype, m, kn):
    k, n = kn
    x = gpu_activation(rng, (m, k), dtype, offset=_offset(mode))
    qweight, w_scale = gpu_weight(n, k)
    x_scale, x_shift = _mode_params(mode)
    check_matmul(x, qweight, w_scale, x_scale, x_shift, None)


@pytest.mark.parametrize("kn", KN_ALL + KN_LLM, ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("m", M_ALL, ids=lambda m: f"M={m}")
@pytest.mark.parametrize("out_dtype", HALF_DTYPES + (torch.float32,), ids=dtype_id)
def test_scaled_mm_vs_reference(rng, out_dtype, m, kn):
    k, n = kn
    if kn in KN_LLM and m not in M_LLM:
        pytest.skip("LLM shapes run for a subset of M")
    g = torch.Generator(device=DEV).manual_seed(_seed(rng))
    xq = torch.randint(-128, 128, (m, k), generator=g, device=DEV, dtype=torch.int8)
    qweight, w_scale = gpu_weight(n, k)
    x_scale = torch.rand(m, generator=g, device=DEV) * 0.05 + 1e-3
    bias = gpu_bias(rng, n, out_dtype)
    for xs in (x_scale, x_scale[:1].clone()):  # per row, per tensor
        out = int8q.scaled_mm(xq, qweight, xs, w_scale, bias, out_dtype)
        ref = reference.scaled_mm(xq, qweight, xs, w_scale, bias, out_dtype)
        assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, None, bias))


@pytest.mark.parametrize("kn", [(100, 37), (96, 40), (4096, 4096)], ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("m", [1, 7, 17, 128, 1000], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("bias", [None, torch.float16, torch.bfloat16, torch.float32],
                         ids=lambda d: "nobias" if d is None else "bias_" + dtype_id(d))
@pytest.mark.parametrize("dtype", HALF_DTYPES + (torch.float32,), ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_matmul_epilogue_variants(rng, mode, dtype, bias, per_channel, m, kn):
    # Weight scale per channel or per tensor, bias of any float dtype (and none), any x dtype.
    k, n = kn
    x = gpu_activation(rng, (m, k), dtype, offset=_offset(mode))
    qweight, w_scale = gpu_weight(n, k, per_channel)
    x_scale, x_shift = _mode_params(mode)
    b = None if bias is None else gpu_bias(rng, n, bias)
    check_matmul(x, qweight, w_scale, x_scale, x_shift, b)


@pytest.mark.parametrize("m", [1, 3, 16, 17, 64, 1000], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("k", [64, 100, 4096], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_outlier_and_zero_rows(rng, mode, dtype, k, m):
    x = gpu_activation(rng, (m, k), dtype, special=False, offset=_offset(mode))
    x = add_outliers(x, rng, range(0, m, 2), factor=1000.0)  # every other row
    if m >= 3:
        x = zero_rows(x, [1])
    qweight, w_scale = gpu_weight(48, k)
    x_scale, x_shift = _mode_params(mode)
    b = gpu_bias(rng, 48, dtype)
    out, _ = check_matmul(x, qweight, w_scale, x_scale, x_shift, b)
    if m >= 3 and mode != "shifted":
        assert torch.equal(out[1], b), "an all-zero row gives exactly the bias"


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("dtype", HALF_DTYPES + (torch.float32,), ids=dtype_id)
@pytest.mark.parametrize("nk", [(1, 1), (7, 17), (513, 1000), (4096, 4096), (14336, 4096)], ids=str)
def test_quantize_weight_vs_reference(rng, nk, dtype, per_channel):
    g = torch.Generator(device=DEV).manual_seed(_seed(rng))
    w = (torch.randn(nk, generator=g, device=DEV) * 0.05).to(dtype)
    if nk[0] >= 3:
        w[1].zero_()
        w[2, 0] = 30.0
    qweight, w_scale = int8q.quantize_weight(w, per_channel)
    ref_q, ref_s = reference.quantize_weight(w, per_channel)
    assert_codes_equal(qweight, ref_q)
    assert_scales_equal(w_scale, ref_s)
    cpu_q, cpu_s = int8q.quantize_weight(w.cpu(), per_channel)
    assert_codes_equal(qweight, cpu_q)
    assert_scales_equal(w_scale, cpu_s)


# (200, 4096): more rows than an H100/H200 has SMs, still spread one row to a block
# (launch_quantize_rows: up to two blocks per SM).
@pytest.mark.parametrize(
    "shape", [(1, 16), (3, 17), (200, 4096), (1000, 4096), (4096, 4096), (4, 8, 100), (7, 14336)], ids=str
)
@pytest.mark.parametrize("dtype", HALF_DTYPES + (torch.float32,), ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_quantize_activation_exact(rng, mode, dtype, shape):
    x = gpu_activation(rng, shape, dtype, offset=_offset(mode))
    x_scale, x_shift = _mode_params(mode)
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
    ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift)
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(scale, ref_s)
    cpu_q, cpu_s = int8q.quantize_activation(x.cpu(), *(None if t is None else t.cpu() for t in (x_scale, x_shift)))
    assert_codes_equal(xq, cpu_q)
    assert_scales_equal(scale, cpu_s)


# The row kernel takes four or eight 16-byte loads per thread by shape (quantize.cu): four up
# to 8M elements with rows of at most 1024 vectors, eight for longer rows or larger calls.
@pytest.mark.parametrize("shape", [(64, 4096), (5, 9216), (2100, 4096)], ids=str)
@pytest.mark.parametrize("dtype", HALF_DTYPES + (torch.float32,), ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_quantize_activation_exact_ties(rng, mode, dtype, shape):
    # Values exactly on a rounding boundary of their scale, planted in every row: the fast
    # path flags them and redoes their packs (round half to even), which must give exactly
    # the reference codes in either load width. Dynamic: absmax 1 and +-1/2 (x / scale
    # within rounding error of 63.5); static: scale 2^-6 and exact ties (j + 1/2) * 2^-6;
    # shifted: the same plus the shift.
    m, k = shape
    g = rng
    x = torch.randn(m, k, generator=g) * 0.3
    cols = torch.randperm(k, generator=g)[: k // 5]
    if mode == "dynamic":
        x = x.clamp(-0.9, 0.9)
        x[:, cols[0]] = 1.0
        x[:, cols[1::2]] = 0.5
        x[:, cols[2::2]] = -0.5
        x_scale = x_shift = None
    else:
        j = torch.randint(-127, 127, (m, cols.numel() - 1), generator=g).float() + 0.5
        shift = 0.25 if mode == "shifted" else 0.0
        x[:, cols[1:]] = j * 2.0**-6 + shift
        x[:, cols[0]] = 3.0 + shift  # clamps to 127
        x_scale = torch.tensor([2.0**-6], device=DEV)
        x_shift = torch.tensor([shift], device=DEV) if mode == "shifted" else None
    x = x.to(dtype).to(DEV)
    xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
    ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift)
    assert_codes_equal(xq, ref_q)
    assert_scales_equal(scale, ref_s)


# ----------------------------------------------------------------------------- integer exactness


@pytest.mark.parametrize("kn", [(4096, 4096), (4103, 37), (1024, 72), (33, 8)], ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("m", [1, 3, 16, 17, 128, 1000], ids=lambda m: f"M={m}")
def test_scaled_mm_unit_scales_exact(rng, m, kn):
    k, n = kn
    g = torch.Generator(device=DEV).manual_seed(_seed(rng))
    xq = torch.randint(-128, 128, (m, k), generator=g, device=DEV, dtype=torch.int8)
    qweight = torch.randint(-128, 128, (n, k), generator=g, device=DEV, dtype=torch.int8)
    out = int8q.scaled_mm(xq, qweight, torch.ones(m, device=DEV), torch.ones(n, device=DEV))
    exact = (xq.long().cpu() @ qweight.long().cpu().t()).float()
    assert torch.equal(out.cpu(), exact)


# (M, K, N): the Hopper GEMM's tile plans, whose output goes out through TMA stores (rows of
# 16-byte multiples), with row and column tails of their tiles and 96-wide tiles; the
# mma.sync path on other GPUs. Then rows that are not 16-byte multiples, which the Hopper
# GEMM stores straight from registers: odd N (one element at a time) and even N (pairs), on
# its 64-wide (the first three), 128-wide, 256-wide, split-K (16 x 14336) and 96-wide
# (300 x 4096) plans (fp32 rows of N = 4100 take TMA), and K = 33, which no tensor-core
# path takes.
WRITE_ALL_CASES = [(64, 4096, 136), (17, 4096, 4104), (1000, 1024, 4096), (300, 4096, 4096),
                   (129, 272, 8), (4096, 512, 264), (200, 4096, 4096), (2100, 256, 1032),
                   (64, 4096, 1001), (17, 4096, 4102), (300, 1024, 130), (1000, 512, 4100),
                   (2100, 256, 1030), (16, 14336, 4102), (300, 4096, 4102), (5, 33, 3)]


@pytest.mark.parametrize("mkn", WRITE_ALL_CASES, ids=str)
@pytest.mark.parametrize("out_dtype", HALF_DTYPES + (torch.float32,), ids=dtype_id)
def test_scaled_mm_writes_every_output(rng, out_dtype, mkn):
    # The output comes from torch.empty, so an element no kernel wrote would keep whatever the
    # memory held, which the caching allocator may make look right. Fill the block that the
    # output will reuse with NaN first: a missing store then shows as NaN.
    m, k, n = mkn
    g = torch.Generator(device=DEV).manual_seed(_seed(rng))
    xq = torch.randint(-128, 128, (m, k), generator=g, device=DEV, dtype=torch.int8)
    qweight, w_scale = gpu_weight(n, k)
    x_scale = torch.rand(m, generator=g, device=DEV) * 0.05 + 1e-3
    ref = reference.scaled_mm(xq, qweight, x_scale, w_scale, None, out_dtype)
    poison = torch.full((m, n), float("nan"), device=DEV, dtype=out_dtype)
    poisoned_ptr = poison.data_ptr()
    del poison
    out = int8q.scaled_mm(xq, qweight, x_scale, w_scale, None, out_dtype)
    assert out.data_ptr() == poisoned_ptr, "the output did not reuse the poisoned block"
    assert not out.isnan().any(), f"{int(out.isnan().sum())} of {m * n} outputs never written"
    assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, None, None))


@pytest.mark.parametrize("k", [MAX_K, MAX_K - 15], ids=["K=131071", "K=131056"])
@pytest.mark.parametrize("m", [1, 17, 128], ids=lambda m: f"M={m}")
def test_worst_case_at_max_k(m, k):
    n = 64
    for a, b in [(127, 127), (-128, -127), (-128, -128), (127, -128)]:
        xq = torch.full((m, k), a, dtype=torch.int8, device=DEV)
        qweight = torch.full((n, k), b, dtype=torch.int8, device=DEV)
        out = int8q.scaled_mm(xq, qweight, torch.ones(1, device=DEV), torch.ones(1, device=DEV))
        expected = float(torch.tensor(a * b * k).float())
        assert (out == expected).all(), f"codes {a} x {b}: int32 accumulation is not exact at K={k}"
    # matmul, shifted: codes -128 against weights -127, through the fused and GEMM paths.
    x = torch.full((m, k), -1000.0, device=DEV, dtype=torch.float16)
    qweight = torch.full((n, k), -127, dtype=torch.int8, device=DEV)
    w_scale = torch.ones(n, device=DEV)
    x_scale, x_shift = torch.ones(1, device=DEV), torch.zeros(1, device=DEV)
    out = int8q.matmul(x.float(), qweight, w_scale, x_scale, x_shift)
    assert (out == float(torch.tensor(16256 * k).float())).all()
    check_matmul(x, qweight, w_scale, x_scale, x_shift)


# ----------------------------------------------------------------------------- dispatch across M


@pytest.mark.parametrize("kn", [(4096, 4096), (100, 37), (256, 72), (4096, 14336)], ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("mode", MODES)
def test_small_and_large_m_paths_agree(rng, mode, dtype, kn):
    # The fused small-M kernel and the quantize + GEMM path compute the same rows: every M
    # from 1 to 20 (across the threshold) against the reference and against M = 320.
    k, n = kn
    x = gpu_activation(rng, (320, k), dtype, offset=_offset(mode))
    qweight, w_scale = gpu_weight(n, k)
    x_scale, x_shift = _mode_params(mode)
    b = gpu_bias(rng, n, dtype)
    extra = epilogue_magnitude(qweight, w_scale, x_shift, b)
    big, _ = check_matmul(x, qweight, w_scale, x_scale, x_shift, b)
    for m in range(1, 21):
        small = int8q.matmul(x[:m], qweight, w_scale, x_scale, x_shift, b)
        ref = reference.matmul(x[:m], qweight, w_scale, x_scale, x_shift, b)
        assert_rows_close(small, ref, extra=extra)
        assert_rows_close(small, big[:m], extra=extra)


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("k", [64, 100, 4096], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("m", [1, 7, 17, 1000], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("mode", MODES)
def test_noncontiguous_and_misaligned_inputs(rng, mode, m, k):
    # Views, and contiguous tensors whose data pointer is not 16-byte aligned (storage
    # offset 1): the fast paths must detect them (or copy) and stay correct.
    n = 40
    x_scale, x_shift = _mode_params(mode)
    qweight, w_scale = gpu_weight(n, k)
    b = gpu_bias(rng, n, torch.float16)
    base = gpu_activation(rng, (m, 2 * k + 1), torch.float16, offset=_offset(mode))
    misaligned_x = base.flatten()[1:m * k + 1].view(m, k)
    assert misaligned_x.is_contiguous() and misaligned_x.data_ptr() % 16 != 0
    w_buf = torch.empty(n * k + 1, dtype=torch.int8, device=DEV)
    misaligned_w = w_buf[1:].view(n, k)
    misaligned_w.copy_(qweight)
    assert misaligned_w.data_ptr() % 16 != 0
    for x in (base[:, :k], base[:, 1:k + 1], base[:, ::2][:, :k], base[:, :k].t().contiguous().t(), misaligned_x):
        check_matmul(x, qweight, w_scale, x_scale, x_shift, b)
        check_matmul(x, misaligned_w, w_scale, x_scale, x_shift, b)
    xq, scale = int8q.quantize_activation(base[:, :k].contiguous())
    xq_buf = torch.empty(m * k + 1, dtype=torch.int8, device=DEV)
    misaligned_xq = xq_buf[1:].view(m, k)
    misaligned_xq.copy_(xq)
    for a in (xq, misaligned_xq, torch.cat([xq, xq], dim=1)[:, k:]):
        for w in (qweight, misaligned_w):
            out = int8q.scaled_mm(a, w, scale, w_scale, b, torch.float16)
            assert_rows_close(out, reference.scaled_mm(a, w, scale, w_scale, b, torch.float16),
                              extra=epilogue_magnitude(qweight, w_scale, None, b))


def test_leading_dims_and_empty(rng):
    qweight, w_scale = gpu_weight(24, 64)
    for shape in [(2, 3, 64), (1, 1, 64), (5, 64), (64,)]:
        for mode in MODES:
            x = gpu_activation(rng, shape, torch.bfloat16)
            x_scale, x_shift = _mode_params(mode)
            out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
            assert out.shape == (*shape[:-1], 24)
            ref = reference.matmul(x.reshape(-1, 64), qweight, w_scale, x_scale, x_shift).reshape(out.shape)
            assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift))
    for shape in [(0, 64), (0, 4, 64), (3, 0, 64)]:
        x = torch.empty(shape, device=DEV, dtype=torch.float16)
        assert int8q.matmul(x, qweight, w_scale).shape == (*shape[:-1], 24)
        assert int8q.scaled_mm(x.to(torch.int8), qweight, torch.ones(1, device=DEV), w_scale).shape == (*shape[:-1], 24)
        assert int8q.quantize_activation(x)[1].shape == shape[:-1]


# ----------------------------------------------------------------------------- uninitialized memory


def _poison_allocator(byte_sizes):
    """Leave NaN-filled free blocks of these sizes (plus large ones) in the caching allocator,
    so the next allocations of those sizes (output, codes, scales, workspaces) start as NaN."""
    blocks = [torch.full((max(1, (s + 3) // 4),), math.nan, device=DEV) for s in byte_sizes]
    blocks += [torch.full((2**18,), math.nan, device=DEV) for _ in range(4)]  # 1 MiB each
    blocks.append(torch.full((2**26,), math.nan, device=DEV))  # 256 MiB
    torch.cuda.synchronize()
    del blocks


@pytest.mark.parametrize("kn", [(4096, 4096), (100, 37), (4096, 14336)], ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("m", [1, 4, 16, 17, 64, 128, 4096], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("mode", MODES + ("scaled_mm",))
def test_poisoned_allocations_give_no_nan(rng, mode, m, kn):
    k, n = kn
    dtype = torch.float16
    x = gpu_activation(rng, (m, k), dtype, offset=_offset(mode))
    qweight, w_scale = gpu_weight(n, k)
    b = gpu_bias(rng, n, dtype)
    sizes = [m * n * 2, m * n * 4, m * k, m * 4, n * 4]
    if mode == "scaled_mm":
        xq, scale = int8q.quantize_activation(x)
        _poison_allocator(sizes)
        out = int8q.scaled_mm(xq, qweight, scale, w_scale, b, dtype)
        ref = reference.scaled_mm(xq, qweight, scale, w_scale, b, dtype)
        extra = epilogue_magnitude(qweight, w_scale, None, b)
    else:
        x_scale, x_shift = _mode_params(mode)
        _poison_allocator(sizes)
        out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b)
        ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, b)
        extra = epilogue_magnitude(qweight, w_scale, x_shift, b)
        _poison_allocator(sizes)
        xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
        ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift)
        assert_codes_equal(xq, ref_q)
        assert_scales_equal(scale, ref_s)
    assert not torch.isnan(out).any(), "NaN in the output of finite inputs: uninitialized memory read"
    assert_rows_close(out, ref, extra=extra)


# ----------------------------------------------------------------------------- CUDA graphs


def _capture(fn, static_inputs):
    """Warm up on a side stream, capture fn(*static_inputs) into a graph; return (graph, out)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)
    return graph, out


@pytest.mark.parametrize("kn", [(4096, 4096), (100, 37)], ids=lambda kn: f"K={kn[0]},N={kn[1]}")
@pytest.mark.parametrize("m", [1, 7, 16, 64, 1000], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("scale_on", ["cuda", "cpu"])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_graph_matmul(rng, mode, scale_on, m, kn):
    if mode == "dynamic" and scale_on == "cpu":
        pytest.skip("dynamic mode has no scale")
    k, n = kn
    qweight, w_scale = gpu_weight(n, k)
    b = gpu_bias(rng, n, torch.bfloat16)
    x_scale, x_shift = static_params(mode, scale_on)
    static_x = gpu_activation(rng, (m, k), torch.bfloat16, offset=_offset(mode))

    def fn(x):
        return int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b)

    graph, static_out = _capture(fn, (static_x,))
    for _ in range(3):
        new_x = gpu_activation(rng, (m, k), torch.bfloat16, offset=_offset(mode))
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        eager = fn(new_x)
        assert torch.equal(static_out, eager), "graph replay differs from eager"
    if scale_on == "cuda" and mode != "dynamic":
        # A device-resident scale/shift is read at run time: updating it affects the replay.
        x_scale.mul_(2.0)
        if x_shift is not None:
            x_shift.add_(0.5)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, fn(static_x))
        ref = reference.matmul(static_x, qweight, w_scale, x_scale, x_shift, b)
        assert_rows_close(static_out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))


@pytest.mark.parametrize("m", [1, 17, 1000], ids=lambda m: f"M={m}")
def test_cuda_graph_scaled_mm_and_quantize(rng, m):
    k, n = 4096, 4096
    qweight, w_scale = gpu_weight(n, k)
    x_scale = torch.full((1,), 4.0 / 127, device=DEV)
    static_x = gpu_activation(rng, (m, k), torch.float16)

    def fn(x):
        xq_dyn, s_dyn = int8q.quantize_activation(x)
        xq_st, _ = int8q.quantize_activation(x, x_scale)
        return xq_dyn, s_dyn, xq_st, int8q.scaled_mm(xq_dyn, qweight, s_dyn, w_scale, None, torch.float16)

    graph, static_out = _capture(fn, (static_x,))
    new_x = gpu_activation(rng, (m, k), torch.float16)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(static_out, fn(new_x)):
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------- streams and devices


@pytest.mark.parametrize("m", [1, 17, 1000], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("mode", MODES)
def test_runs_on_current_stream(rng, mode, m):
    # The input is produced on a side stream after a long sleep; a kernel launched on any
    # other stream than the current one would read it before it is written.
    k, n = 4096, 4096
    qweight, w_scale = gpu_weight(n, k)
    x_scale, x_shift = _mode_params(mode)
    src = gpu_activation(rng, (m, k), torch.float16, offset=_offset(mode))
    expected = int8q.matmul(src, qweight, w_scale, x_scale, x_shift)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(100_000_000)
        x = src * 1.0
        out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift)
    s.synchronize()
    assert torch.equal(out, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("m", [1, 17, 1000], ids=lambda m: f"M={m}")
@pytest.mark.parametrize("mode", MODES)
def test_nonzero_device_index(rng, mode, m):
    # Tensors on cuda:1 while the current device is cuda:0 (and the other way round): the
    # device guard must launch on the tensors' device.
    k, n = 4096, 1000
    for dev, current in (("cuda:1", 0), ("cuda:0", 1)):
        x = gpu_activation(rng, (m, k), torch.float16, offset=_offset(mode)).to(dev)
        qweight, w_scale = (t.to(dev) for t in gpu_weight(n, k))
        x_scale, x_shift = static_params(mode, dev)
        b = gpu_bias(rng, n, torch.float16).to(dev)
        with torch.cuda.device(current):
            out = int8q.matmul(x, qweight, w_scale, x_scale, x_shift, b)
            xq, scale = int8q.quantize_activation(x, x_scale, x_shift)
            qw2, ws2 = int8q.quantize_weight(x[:7].float(), True)
            mm = int8q.scaled_mm(xq, qweight, scale, w_scale, b, torch.float16) if mode == "dynamic" else None
        assert out.device == torch.device(dev) and xq.device == torch.device(dev) and qw2.device == torch.device(dev)
        torch.cuda.synchronize(dev)
        ref = reference.matmul(x, qweight, w_scale, x_scale, x_shift, b)
        assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, x_shift, b))
        ref_q, ref_s = reference.quantize_activation(x, x_scale, x_shift)
        assert_codes_equal(xq, ref_q)
        assert_scales_equal(scale, ref_s)
        rq, rs = reference.quantize_weight(x[:7].float(), True)
        assert_codes_equal(qw2, rq)
        assert_scales_equal(ws2, rs)
        if mm is not None:
            assert_rows_close(mm, reference.scaled_mm(xq, qweight, scale, w_scale, b, torch.float16),
                              extra=epilogue_magnitude(qweight, w_scale, None, b))


# ----------------------------------------------------------------------------- invalid device scale


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, -math.inf], ids=str)
@pytest.mark.parametrize("k", [64, 100, 4096], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("m", [1, 17, 1000], ids=lambda m: f"M={m}")
def test_invalid_cuda_scale_gives_nan(rng, m, k, value):
    # Documented policy: a CUDA-resident static scale is checked inside the kernel (no host
    # sync), so an invalid one gives NaN outputs; the same value on the CPU raises.
    n = 40
    x = gpu_activation(rng, (m, k), torch.float16)
    qweight, w_scale = gpu_weight(n, k)
    b = gpu_bias(rng, n, torch.float16)
    bad = torch.tensor([value], device=DEV)
    for shift in (None, torch.tensor([0.25], device=DEV)):
        out = int8q.matmul(x, qweight, w_scale, bad, shift, b)
        assert torch.isnan(out).all(), "an invalid device-resident static scale must give NaN outputs"
        ref = reference.matmul(x, qweight, w_scale, bad, shift, b)
        assert torch.isnan(ref).all()
        xq, scale = int8q.quantize_activation(x, bad, shift)
        ref_q, _ = reference.quantize_activation(x, bad, shift)
        assert_codes_equal(xq, ref_q)
        with pytest.raises(RuntimeError, match=r"int8q\.matmul: x_scale must be (finite|positive)"):
            int8q.matmul(x, qweight, w_scale, bad.cpu(), None if shift is None else shift.cpu(), b)
    # A NaN shift on the device poisons the output the same way.
    out = int8q.matmul(x, qweight, w_scale, torch.ones(1, device=DEV), torch.tensor([math.nan], device=DEV), b)
    assert torch.isnan(out).all()


# ----------------------------------------------------------------------------- sm80 path on Hopper


@pytest.mark.parametrize("m,k,n", [(17, 272, 136), (48, 4096, 520), (100, 1040, 1000), (300, 592, 1001),
                                   (1000, 4096, 4096), (1100, 2064, 1032), (2048, 4096, 4096)])
def test_mma_sync_path_when_sm90a_is_disabled(monkeypatch, rng, m, k, n):
    # INT8Q_DISABLE_SM90A=1 sends every tile configuration of the mma.sync GEMM (32x64 split-K,
    # 64x128, 128x128, 128x256) through H100/H200 too, so the path A100/L4 users get stays tested.
    monkeypatch.setenv("INT8Q_DISABLE_SM90A", "1")
    xq = torch.randint(-128, 128, (m, k), device=DEV, dtype=torch.int8)
    qweight = torch.randint(-127, 128, (n, k), device=DEV, dtype=torch.int8)
    ones_m, ones_n = torch.ones(m, device=DEV), torch.ones(n, device=DEV)
    exact = int8q.scaled_mm(xq, qweight, ones_m, ones_n, out_dtype=torch.float32)
    assert torch.equal(exact, reference.int_matmul(xq, qweight).float())
    x = gpu_activation(rng, (m, k), torch.float16)
    w_q, w_scale = gpu_weight(n, k)
    check_matmul(x, w_q, w_scale, None, None, gpu_bias(rng, n, torch.float16))


# ----------------------------------------------------------------------------- sm_90a tile plans


# (M, K, N) that gemm_sm90a.cu's pick_plan sends, on an H100/H200 (132 SMs, 30 clusters of 4
# at once), to each plan of the small-M region; on other cards they still check some plan.
SM90A_PLANS = [
    (1, 256, 72),        # 8-row A box, one consumer warpgroup, 64-wide tiles
    (17, 6160, 1000),    # 64-wide tiles split over clusters of 2; K tail (49 K tiles: 25 + 24)
    (17, 6160, 1001),    # the same with odd N (scalar stores)
    (100, 6160, 5121),   # 128-wide tiles split in 2; 104-row box: rows 100..127 of the tile unloaded
    (64, 12304, 448),    # 64-wide tiles split over clusters of 4 (97 K tiles: 25 x 3 + 22)
    (40, 12304, 1984),   # 128-wide tiles split over clusters of 4
    (64, 4096, 4096),    # 64-wide tiles, unsplit (K too short to split)
    (127, 4096, 4096),
    (200, 4096, 4096),   # two row tiles of 64-wide tiles; the last one's A box 72 rows
    (192, 4096, 4096),   # the last row tile's box exactly 64 rows (both warpgroups still run)
    (300, 4096, 4096),   # 96-wide tiles: 3 row tiles x 43 column tiles = 129 CTAs
    (290, 1040, 4001),   # 96-wide tiles, odd N (the last column tile 65 wide), K tail
    (1100, 2064, 1032),  # 9 row tiles, the last box 80 rows; K tail; persistent 128-wide tiles
]


@pytest.mark.parametrize("m,k,n", SM90A_PLANS, ids=str)
def test_sm90a_small_m_plans(rng, m, k, n):
    # Exact int32 core (unit scales, fp32 out), then the full epilogue for each output dtype,
    # then matmul on weights quantized just before (its GEMM loads W ahead of pdl_wait).
    g = torch.Generator(device=DEV).manual_seed(_seed(rng))
    xq = torch.randint(-128, 128, (m, k), generator=g, device=DEV, dtype=torch.int8)
    qweight = torch.randint(-127, 128, (n, k), generator=g, device=DEV, dtype=torch.int8)
    ones_m, ones_n = torch.ones(m, device=DEV), torch.ones(n, device=DEV)
    exact = int8q.scaled_mm(xq, qweight, ones_m, ones_n, out_dtype=torch.float32)
    assert torch.equal(exact, reference.int_matmul(xq, qweight).float())
    w_scale = torch.rand(n, generator=g, device=DEV) * 0.01 + 1e-4
    x_scale = torch.rand(m, generator=g, device=DEV) * 0.05 + 1e-3
    for out_dtype in HALF_DTYPES + (torch.float32,):
        bias = gpu_bias(rng, n, out_dtype)
        out = int8q.scaled_mm(xq, qweight, x_scale, w_scale, bias, out_dtype)
        ref = reference.scaled_mm(xq, qweight, x_scale, w_scale, bias, out_dtype)
        assert_rows_close(out, ref, extra=epilogue_magnitude(qweight, w_scale, None, bias))
    w = torch.randn(n, k, generator=g, device=DEV, dtype=torch.float16) * 0.05
    w_q, ws = int8q.quantize_weight(w)
    x = gpu_activation(rng, (m, k), torch.bfloat16)
    check_matmul(x, w_q, ws, None, None, gpu_bias(rng, n, torch.bfloat16))


# ----------------------------------------------------------------------------- programmatic dependent launch


@pytest.mark.parametrize("m", [1, 4, 16, 33, 64, 300, 2048])
def test_dependent_launches_read_what_the_kernel_before_wrote(monkeypatch, rng, m):
    # On sm_90 int8q's kernels launch with PDL: each may start while the kernel before it in
    # the stream is still running, and must wait before touching memory (launch.cuh). A
    # chain where every op consumes what the previous kernel has just written (fresh weights
    # from quantize_weight, the previous layer's output as x) must give exactly what the same
    # chain gives with PDL off, and what the reference gives layer by layer.
    k = 1024
    weights = [torch.randn(k, k, device=DEV, dtype=torch.float16) / k**0.5 for _ in range(4)]
    x0 = gpu_activation(rng, (m, k), torch.float16)

    def chain():
        x, outs = x0, []
        for i, w in enumerate(weights):
            qw, ws = int8q.quantize_weight(w)
            if i % 2:
                xq, xs = int8q.quantize_activation(x)
                x = int8q.scaled_mm(xq, qw, xs, ws, None, torch.float16)
            else:
                x = int8q.matmul(x, qw, ws)
            outs.append((qw, ws, x))
        return outs

    with_pdl = chain()
    monkeypatch.setenv("INT8Q_DISABLE_PDL", "1")
    without = chain()
    torch.cuda.synchronize()
    x = x0
    for (qw, ws, out), (qw2, ws2, out2) in zip(with_pdl, without):
        assert torch.equal(qw, qw2) and torch.equal(ws, ws2)
        assert torch.equal(out, out2), "PDL changed a result"
        assert_rows_close(out, reference.matmul(x, qw, ws), extra=epilogue_magnitude(qw, ws, None, None))
        x = out


@pytest.mark.parametrize("m", [3, 5, 8])
@pytest.mark.parametrize("k,n", [(4096, 4096), (1040, 1000), (14336, 520)], ids=lambda v: str(v))
@pytest.mark.parametrize("mode", MODES)
def test_fused_tensor_core_decode_kernel_without_pdl(monkeypatch, rng, mode, m, k, n):
    # With PDL (sm_90) M = 3..8 runs quantize + GEMM; without it (INT8Q_DISABLE_PDL=1, and
    # every GPU before sm_90) the fused tensor-core decode kernel runs instead: keep it tested.
    monkeypatch.setenv("INT8Q_DISABLE_PDL", "1")
    x = gpu_activation(rng, (m, k), torch.bfloat16, offset=_offset(mode))
    qweight, w_scale = gpu_weight(n, k)
    x_scale, x_shift = static_params(mode, DEV)
    check_matmul(x, qweight, w_scale, x_scale, x_shift, gpu_bias(rng, n, torch.bfloat16))
