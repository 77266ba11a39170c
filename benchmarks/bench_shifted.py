"""What does the shift term of static shifted quantization cost?

For each (K, N) and M it times, in one run on one card:
  static           int8q.matmul, static per-tensor scale
  shifted          the same with x_shift: the op sums the weights (a pass over them) every call
  shifted + w_sum  the same with the weight sums passed in (what a shifted QuantLinear does)
and F.linear fp16 as the yardstick. Inputs rotate past L2. Writes shifted_<card>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import common

DEFAULT_M = [1, 4, 16, 64, 256, 1024, 4096]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=common.parse_int_list, default=DEFAULT_M)
    parser.add_argument("--shapes", type=common.parse_shapes, default=common.LINEAR_SHAPES)
    common.add_rounds_arg(parser)
    common.add_timing_args(parser, warmup_ms=10, rep_ms=40)
    args = parser.parse_args()
    common.check_rounds(args, parser)
    device = common.require_cuda("bench_shifted.py")
    int8q, why = common.load_int8q()
    if int8q is None:
        print(f"bench_shifted.py: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    x_scale = torch.tensor([4.0 / 127], device=device)
    x_shift = torch.tensor([0.25], device=device)

    methods = {
        "static": lambda x, qw, ws, w_sum, w: int8q.matmul(x, qw, ws, x_scale),
        "shifted": lambda x, qw, ws, w_sum, w: int8q.matmul(x, qw, ws, x_scale, x_shift),
        "shifted + w_sum": lambda x, qw, ws, w_sum, w: int8q.matmul(x, qw, ws, x_scale, x_shift, w_sum=w_sum),
    }

    def weights_for(k, n):
        w = torch.randn(n, k, device=device, dtype=torch.float16) / k**0.5
        qw, ws = int8q.quantize_weight(w)
        return qw, ws, qw.sum(1, dtype=torch.int32), w

    rows, records = common.sweep_by_m(args, device, methods, weights_for, x_offset=0.25)
    machine = common.machine_info(device)
    slug = common.card_slug(machine["device_name"])
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, f"shifted_{slug}.json"), {"machine": machine, "results": records})
    header = ["K x N", "M", "fp16 us", "static", "shifted (sums per call)", "shifted + w_sum"]
    table = common.markdown_table(header, rows, 1)
    common.write_text(os.path.join(args.out, f"shifted_{slug}.md"),
                      "# int8q static shifted matmul: the cost of the shift term\n\n"
                      + common.machine_markdown(machine, common.TIMING_NOTE + common.ROUNDS_NOTE) + "\n"
                      + "Cells: time in microseconds (speedup over fp16 `F.linear` in the same run).\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
