"""What does the shift term of static shifted quantization cost?

For each (K, N) and M it times, in one run on one card:
  static           int8q.matmul, static per-tensor scale
  shifted          the same with x_shift: the op sums the weights (a pass over them) every call
  shifted + w_sum  the same with the weight sums passed in (what a shifted QuantLinear does)
and F.linear fp16 as the yardstick. Inputs rotate past L2. Writes shifted_<card>.json and .md.
"""

from __future__ import annotations

import sys

import torch

import common

DEFAULT_M = [1, 4, 16, 64, 256, 1024, 4096]


def main() -> int:
    args, device, int8q = common.m_sweep_setup("bench_shifted.py", __doc__, DEFAULT_M)
    if int8q is None:
        return 2
    x_scale = torch.tensor([4.0 / 127], device=device)
    x_shift = torch.tensor([0.25], device=device)

    methods = {
        "static": lambda x, qw, ws, w_sum, w: int8q.matmul(x, qw, ws, x_scale),
        "shifted": lambda x, qw, ws, w_sum, w: int8q.matmul(x, qw, ws, x_scale, x_shift),
        "shifted + w_sum": lambda x, qw, ws, w_sum, w: int8q.matmul(x, qw, ws, x_scale, x_shift, w_sum=w_sum),
    }

    def weights_for(k, n):
        qw, ws, w = common.quantized_linear(int8q, device, k, n)
        return qw, ws, qw.sum(1, dtype=torch.int32), w

    rows, records = common.sweep_by_m(args, device, methods, weights_for, x_offset=0.25)
    common.write_m_sweep(args, device, "shifted", "int8q static shifted matmul: the cost of the shift term",
                         ["K x N", "M", "fp16 us", "static", "shifted (sums per call)", "shifted + w_sum"],
                         rows, records,
                         intro="Cells: time in microseconds (speedup over fp16 `F.linear` in the same run).\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
