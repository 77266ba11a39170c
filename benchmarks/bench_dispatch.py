"""Which int8q kernel path is fastest at each M? The data behind ops_cuda.cu's dispatch.

For each (K, N) and M it times, in one run on one card:
  matmul        int8q.matmul dynamic as dispatched today
  matmul no-PDL the same with INT8Q_DISABLE_PDL=1: plain launches, and the fused small-M
                kernel up to M = 8 (what GPUs before sm_90 run)
  two-pass      quantize_activation + scaled_mm: the separate quantize kernel + the GEMM int8q picks
  sm80          the same two-pass with INT8Q_DISABLE_SM90A=1 (mma.sync kernels, split-K at low tile counts)
and F.linear fp16 as the yardstick. Inputs rotate past L2. Writes dispatch_<card>.json and .md.
"""

from __future__ import annotations

import os
import sys

import common

DEFAULT_M = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]


def main() -> int:
    args, device, int8q = common.m_sweep_setup("bench_dispatch.py", __doc__, DEFAULT_M)
    if int8q is None:
        return 2

    def with_env(name, fn):
        def call(*args):
            os.environ[name] = "1"
            try:
                return fn(*args)
            finally:
                del os.environ[name]
        return call

    def two_pass(x, qw, ws, w):
        xq, xs = int8q.quantize_activation(x)
        return int8q.scaled_mm(xq, qw, xs, ws, out_dtype=x.dtype)

    def matmul(x, qw, ws, w):
        return int8q.matmul(x, qw, ws)

    methods = {
        "matmul": matmul,
        "matmul no-PDL": with_env("INT8Q_DISABLE_PDL", matmul),
        "two-pass": two_pass,
        "sm80": with_env("INT8Q_DISABLE_SM90A", two_pass),
    }

    rows, records = common.sweep_by_m(args, device, methods,
                                      lambda k, n: common.quantized_linear(int8q, device, k, n))
    common.write_m_sweep(args, device, "dispatch", "int8q kernel paths by M",
                         ["K x N", "M", "fp16 us", "matmul", "matmul no-PDL", "two-pass", "sm80 two-pass"],
                         rows, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
