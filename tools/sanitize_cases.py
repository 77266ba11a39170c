#!/usr/bin/env python3
"""Call every CUDA kernel path of int8q once, for compute-sanitizer (tools/sanitize.sh).

The cases cover: matmul dynamic / static / static+shift at M in {1, 17, 4096} (fused small-M
path for M <= 8 in each of its row-count variants, quantize + tensor-core GEMM above), the
generic GEMM (K % 16 != 0, misaligned int8 operands), every GEMM tile shape with M and N
tails (sm80 mma.sync; sm90a wgmma with 64-, 128- and 256-wide tiles, more tiles than SMs),
split-K (small M, long K: a workspace and a reduce kernel on sm80, clusters on sm90a), K tiles past the pipeline depth, non-contiguous / misaligned / 3-D
activations, M = 0, NaN/Inf rows, x_smooth (quantize_activation and matmul),
scaled_mm per-row / per-tensor in every output dtype, quantize_activation in every mode and
quantize_weight per-channel / per-tensor. Each result is checked against int8q.reference on
the CPU (outside the sanitized kernels) unless --no-check.

--size full: modest sizes (memcheck, initcheck). --size small: the same paths with smaller K
and N (racecheck, synccheck), keeping one M = 4096 GEMM.
Exit status: 0 all cases ran and matched, 1 a case failed, 2 no CUDA device or kernels.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from op_cases import OpCase, build, check, expected, run, to_device  # noqa: E402

import int8q  # noqa: E402

# (op, mode, M, (K, N) full, (K, N) small, options). N is the weight's rows for quantize_weight.
_TABLE = [
    # matmul, every mode at M in {1, 17, 4096}: K % 16 == 0, N odd.
    ("matmul", "dynamic", 1, (4096, 257), (1024, 129), dict(dtype="fp16", bias="fp16")),
    ("matmul", "static", 1, (4096, 257), (1024, 129), dict(dtype="bf16", scale_on_cpu=True)),
    ("matmul", "shift", 1, (4096, 257), (1024, 129), dict(dtype="fp32", per_channel=False, bias="bf16")),
    ("matmul", "dynamic", 17, (4096, 257), (1024, 129), dict(dtype="bf16", bias="fp32")),
    ("matmul", "static", 17, (4096, 257), (1024, 129), dict(dtype="fp16", per_channel=False)),
    ("matmul", "shift", 17, (4096, 257), (1024, 129), dict(dtype="fp16", scale_on_cpu=True, bias="fp16")),
    ("matmul", "dynamic", 4096, (1024, 257), (256, 65), dict(dtype="fp16", bias="fp16")),
    ("matmul", "static", 4096, (1024, 257), (256, 65), dict(dtype="bf16", w_data="full_range")),
    ("matmul", "shift", 4096, (1024, 257), (256, 65), dict(dtype="fp16", w_data="saturated", bias="fp32")),
    # The fused small-M kernel's row-count variants (M = 1, 2, <= 4, <= 8).
    ("matmul", "dynamic", 2, (4096, 257), (1024, 129), dict(dtype="bf16")),
    ("matmul", "shift", 3, (2048, 129), (1024, 65), dict(dtype="fp16", bias="fp16")),
    ("matmul", "static", 8, (4096, 257), (1024, 129), dict(dtype="fp32", per_channel=False)),
    # The generic GEMM: K % 16 != 0.
    ("matmul", "dynamic", 1, (100, 33), (100, 33), dict(dtype="fp16")),
    ("matmul", "shift", 17, (4095, 33), (1000, 33), dict(dtype="bf16", bias="bf16")),
    ("matmul", "static", 4096, (100, 33), (36, 17), dict(dtype="fp32")),
    # Tile shapes with M tails, split-K, K tiles past the pipeline depth.
    ("matmul", "dynamic", 64, (4096, 136), (2048, 72), dict(dtype="fp16")),
    ("matmul", "dynamic", 200, (1024, 136), (1024, 136), dict(dtype="bf16", per_channel=False)),
    ("matmul", "shift", 300, (2048, 264), (768, 64), dict(dtype="fp16")),
    ("matmul", "static", 1000, (512, 1000), (640, 72), dict(dtype="bf16", bias="fp16")),
    ("matmul", "dynamic", 100, (1024, 136), (1024, 136), dict(dtype="fp16")),
    # M >= 128 on sm_90a (wgmma): 128- and 256-wide tiles, more tiles than SMs (the persistent
    # loop), more K tiles than pipeline stages.
    ("matmul", "dynamic", 4096, (640, 2048), (128, 2048), dict(dtype="fp16", bias="fp16")),
    ("scaled_mm", "per_row", 5760, (256, 576), (128, 576), dict(out_dtype="bf16")),
    ("matmul", "shift", 1152, (640, 2048), (640, 2048), dict(dtype="bf16")),
    ("scaled_mm", "per_tensor", 256, (1024, 128), (1024, 128), dict(out_dtype="fp16")),
    # sm_90a small-M plans: K split over clusters of 2 (64- and 128-wide tiles) and of 4, the
    # partial sums exchanged in distributed shared memory; short A boxes, one consumer warpgroup.
    ("matmul", "dynamic", 17, (6224, 1000), (6224, 1000), dict(dtype="fp16", bias="fp16")),
    ("scaled_mm", "per_row", 100, (6160, 5121), (6160, 5121), dict(out_dtype="bf16", bias="fp32")),
    ("matmul", "shift", 40, (12304, 1984), (12304, 448), dict(dtype="bf16")),
    # sm_90a 96-wide tiles (three row tiles of N ~ 4096: 3 x 43 CTAs).
    ("scaled_mm", "per_row", 300, (1040, 4100), (256, 4100), dict(out_dtype="fp16")),
    # Activation layouts: strided, padded rows, misaligned pointer, transposed, 3-D, M = 0.
    ("matmul", "dynamic", 17, (1024, 129), (512, 65), dict(dtype="fp16", layout="strided")),
    ("matmul", "dynamic", 4096, (512, 65), (128, 33), dict(dtype="bf16", layout="row_padded")),
    ("matmul", "dynamic", 1, (1024, 129), (512, 65), dict(dtype="fp16", layout="offset")),
    ("matmul", "static", 17, (1024, 129), (512, 65), dict(dtype="fp16", layout="offset")),
    ("matmul", "shift", 64, (512, 129), (256, 65), dict(dtype="bf16", layout="transposed")),
    ("matmul", "dynamic", 24, (512, 96), (256, 64), dict(dtype="fp16", lead=(4, 6), layout="batch_transposed")),
    ("matmul", "dynamic", 0, (512, 64), (512, 64), dict(dtype="fp16")),
    # NaN / Inf rows, zero rows, misaligned and non-contiguous weights.
    ("matmul", "dynamic", 17, (1024, 129), (512, 65), dict(dtype="fp16", data="nonfinite")),
    ("matmul", "static", 4096, (512, 129), (128, 33), dict(dtype="bf16", data="nonfinite")),
    ("matmul", "dynamic", 17, (1024, 129), (512, 65), dict(dtype="bf16", data="zero_rows", w_data="zero_rows")),
    ("matmul", "dynamic", 300, (512, 96), (256, 64), dict(dtype="fp16", w_layout="offset")),
    ("matmul", "dynamic", 1, (512, 96), (256, 64), dict(dtype="fp16", w_layout="transposed", param_layout="strided",
                                                      bias="fp16")),
    # scaled_mm: per-row / per-tensor, every output dtype, split-K, generic, misaligned xq.
    ("scaled_mm", "per_row", 1, (4096, 256), (2048, 72), dict(out_dtype="fp32")),
    ("scaled_mm", "per_tensor", 1, (4096, 257), (2048, 65), dict(out_dtype="fp16", bias="fp32")),
    ("scaled_mm", "per_row", 17, (4096, 256), (2048, 72), dict(out_dtype="bf16", bias="bf16")),
    ("scaled_mm", "per_tensor", 17, (1024, 257), (1024, 65), dict(out_dtype=None, per_channel=False)),
    ("scaled_mm", "per_row", 4096, (1024, 257), (256, 65), dict(out_dtype="fp16", data="full_range")),
    ("scaled_mm", "per_tensor", 4096, (512, 128), (256, 72), dict(out_dtype="bf16", data="saturated",
                                                                  w_data="saturated")),
    ("scaled_mm", "per_row", 17, (100, 33), (100, 33), dict(out_dtype="fp32")),
    ("scaled_mm", "per_row", 4096, (100, 33), (36, 17), dict(out_dtype="fp16")),
    ("scaled_mm", "per_row", 17, (512, 65), (256, 33), dict(out_dtype="fp32", layout="offset")),
    ("scaled_mm", "per_tensor", 200, (512, 65), (256, 33), dict(out_dtype="fp16", w_layout="offset")),
    ("scaled_mm", "per_row", 0, (512, 64), (512, 64), dict(out_dtype="fp16")),
    # quantize_activation: every mode at M in {1, 17, 4096}, K tails, NaN rows, misaligned x.
    ("quantize_activation", "dynamic", 1, (4096, 0), (1024, 0), dict(dtype="fp16")),
    ("quantize_activation", "static", 1, (4095, 0), (1000, 0), dict(dtype="bf16")),
    ("quantize_activation", "shift", 17, (4096, 0), (1024, 0), dict(dtype="fp32", scale_on_cpu=True)),
    ("quantize_activation", "dynamic", 17, (100, 0), (100, 0), dict(dtype="bf16", data="nonfinite")),
    ("quantize_activation", "dynamic", 4096, (512, 0), (256, 0), dict(dtype="fp16", data="zero_rows")),
    ("quantize_activation", "static", 4096, (512, 0), (256, 0), dict(dtype="fp16", data="nonfinite")),
    ("quantize_activation", "shift", 4096, (100, 0), (36, 0), dict(dtype="bf16")),
    ("quantize_activation", "dynamic", 17, (1024, 0), (512, 0), dict(dtype="fp16", layout="offset")),
    # x_smooth: the smoothing quantize kernels (vector and scalar loads, rows past the
    # register cache), and matmul at small M (which then skips the fused kernel).
    ("quantize_activation", "dynamic", 17, (4096, 0), (1024, 0), dict(dtype="bf16", smooth="random")),
    ("quantize_activation", "static", 4096, (512, 0), (256, 0), dict(dtype="fp16", smooth="random",
                                                                     data="nonfinite")),
    ("quantize_activation", "shift", 17, (1000, 0), (100, 0), dict(dtype="fp32", smooth="offset")),
    ("quantize_activation", "dynamic", 3, (24576, 0), (24576, 0), dict(dtype="fp16", smooth="random")),
    ("matmul", "dynamic", 1, (4096, 257), (1024, 129), dict(dtype="fp16", smooth="random", bias="fp16")),
    ("matmul", "shift", 200, (1024, 136), (512, 72), dict(dtype="bf16", smooth="offset")),
    # quantize_weight: per-channel / per-tensor, N in {1, 17, 4096}, K tails, zero rows.
    ("quantize_weight", "per_channel", 0, (4095, 1), (1000, 1), dict(dtype="fp16")),
    ("quantize_weight", "per_tensor", 0, (100, 17), (100, 17), dict(dtype="bf16")),
    ("quantize_weight", "per_channel", 0, (512, 4096), (128, 4096), dict(dtype="fp32", data="zero_rows")),
    ("quantize_weight", "per_tensor", 0, (512, 4096), (128, 4096), dict(dtype="fp16", data="outlier_channels")),
    ("quantize_weight", "per_channel", 0, (1024, 129), (512, 65), dict(dtype="bf16", layout="transposed")),
]


def cases(size: str):
    out = []
    for i, (op, mode, m, full, small, opts) in enumerate(_TABLE):
        k, n = full if size == "full" else small
        if op == "scaled_mm":
            opts = {"data": "random", **opts}
        out.append(OpCase(op=op, mode=mode, m=m, k=k, n=n, seed=1000 + i, **opts))
    return out


def _to_cpu(result):
    if isinstance(result, tuple):
        return tuple(t.cpu() for t in result)
    return result.cpu()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("full", "small"), default="full")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: check this script's cases only")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the CPU reference")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    args = p.parse_args(argv)

    todo = cases(args.size)
    if args.list:
        for i, c in enumerate(todo):
            print(f"{i:3d} {c.describe()}")
        return 0
    if args.device == "cuda" and not (torch.cuda.is_available() and int8q.has_cuda_kernels()):
        print("sanitize_cases.py: needs a CUDA device and int8q built with its CUDA kernels", file=sys.stderr)
        return 2
    device = torch.device(args.device)

    failed = 0
    t_start = time.perf_counter()
    for i, case in enumerate(todo):
        t0 = time.perf_counter()
        try:
            inputs = build(case, device)
            got = run(case, inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            status = "ran"
            if not args.no_check:
                cpu_inputs = to_device(inputs, "cpu")
                verdict = check(case, cpu_inputs, _to_cpu(got), expected(case, cpu_inputs))
                status = "ok" if verdict.ok else f"MISMATCH {verdict.detail}"
                failed += not verdict.ok
        except Exception as e:  # noqa: BLE001 - report the case, keep going unless the context is gone
            failed += 1
            status = f"FAILED {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            if device.type == "cuda" and (type(e).__name__ == "AcceleratorError" or "CUDA error" in str(e)):
                print(f"{i:3d} {status} | {case.describe()}\nCUDA context unusable; stopping.", flush=True)
                return 1
        print(f"{i:3d} {status} ({(time.perf_counter() - t0) * 1e3:.0f} ms) | {case.describe()}", flush=True)
    print(f"sanitize_cases: {len(todo)} cases ({args.size}), {failed} failed, "
          f"{time.perf_counter() - t_start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
