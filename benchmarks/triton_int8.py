"""A plain Triton int8 GEMM: the baseline a user could write in an afternoon.

``int8_gemm`` computes ``(xq @ qweight.T) * x_scale[:, None] * w_scale[None, :]`` from int8
codes (``tl.dot`` on int8, which Triton lowers to the int8 tensor-core instructions) with the
scales applied in the epilogue. ``w8a8_linear`` puts a per-row quantize kernel in front of it,
so it computes what ``int8q.matmul`` (dynamic) computes. No autotuning: one fixed tile per M
range, so the timings do not depend on a tuning run.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

__all__ = ["int8_gemm", "quantize_rows", "w8a8_linear"]


@triton.jit
def _int8_gemm_kernel(
    a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles walk the weight column tiles together, so each weight
    # tile is read from memory once per group instead of once per row tile.
    tiles_per_group = GROUP_M * grid_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_rows
    pid_n = (pid % tiles_per_group) // group_rows

    # Rows and columns past the edge wrap around instead of being masked: the loads stay
    # unmasked and vectorized, and the store below drops them.
    offs_am = tl.max_contiguous(tl.multiple_of((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_bn[None, :] * stride_bn + offs_k[:, None] * stride_bk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    offs_cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    a_scale = tl.load(a_scale_ptr + offs_cm, mask=offs_cm < M, other=0.0)
    b_scale = tl.load(b_scale_ptr + offs_cn, mask=offs_cn < N, other=0.0)
    c = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    c_ptrs = c_ptr + offs_cm[:, None] * stride_cm + offs_cn[None, :] * stride_cn
    tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=(offs_cm[:, None] < M) & (offs_cn[None, :] < N))


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, K, stride_xm, stride_qm, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_xm
    absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        offs = k * BLOCK_K + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        absmax = tl.maximum(absmax, tl.abs(x))
    scale = tl.max(absmax, axis=0) / 127.0
    scale = tl.where(scale > 0, scale, 1.0)
    tl.store(scale_ptr + row, scale)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        offs = k * BLOCK_K + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32) / scale
        # Round half away from zero (the float -> int cast truncates): a baseline need not
        # match int8q's round-half-even bit for bit.
        q = tl.where(x >= 0, x + 0.5, x - 0.5)
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        tl.store(q_ptr + row * stride_qm + offs, q.to(tl.int8), mask=offs < K)


def _tile_config(m: int) -> Tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, stages, warps) for a given number of rows."""
    if m <= 64:
        # Few rows: narrow tiles so more CTAs share the weight stream.
        return max(16, triton.next_power_of_2(m)), 64, 256, 3, 4
    if m < 2048:
        return 128, 128, 128, 3, 8
    return 256, 128, 128, 3, 8


def int8_gemm(
    xq: torch.Tensor, qweight: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """``(xq @ qweight.T) * x_scale[m] * w_scale[n]``: xq ``[M, K]`` int8, qweight ``[N, K]`` int8,
    x_scale ``[M]`` and w_scale ``[N]`` float32."""
    m, k = xq.shape
    n = qweight.shape[0]
    out = torch.empty((m, n), device=xq.device, dtype=out_dtype)
    if m == 0:
        return out
    block_m, block_n, block_k, stages, warps = _tile_config(m)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _int8_gemm_kernel[grid](
        xq, qweight, out, x_scale, w_scale, m, n, k,
        xq.stride(0), xq.stride(1), qweight.stride(0), qweight.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        num_stages=stages, num_warps=warps,
    )
    return out


def quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row symmetric quantization of a 2-D float tensor: (codes int8, scale float32 [M])."""
    x = x.contiguous()  # the kernel walks each row with unit stride
    m, k = x.shape
    xq = torch.empty((m, k), device=x.device, dtype=torch.int8)
    scale = torch.empty((m,), device=x.device, dtype=torch.float32)
    if m > 0:
        _quantize_rows_kernel[(m,)](x, xq, scale, k, x.stride(0), xq.stride(0), BLOCK_K=1024, num_warps=4)
    return xq, scale


def w8a8_linear(x: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """The W8A8 linear layer built from the two kernels above: quantize rows, then GEMM."""
    xq, x_scale = quantize_rows(x)
    return int8_gemm(xq, qweight, x_scale, w_scale, out_dtype=x.dtype)
