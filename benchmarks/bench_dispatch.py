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

import argparse
import os
import sys

import torch

import common

DEFAULT_M = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=common.parse_int_list, default=DEFAULT_M)
    parser.add_argument("--shapes", type=common.parse_shapes, default=common.LINEAR_SHAPES)
    common.add_rounds_arg(parser)
    common.add_timing_args(parser, warmup_ms=10, rep_ms=40)
    args = parser.parse_args()
    common.check_rounds(args, parser)
    device = common.require_cuda("bench_dispatch.py")
    int8q, why = common.load_int8q()
    if int8q is None:
        print(f"bench_dispatch.py: {why}", file=sys.stderr)
        return 2
    torch.manual_seed(0)

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

    def weights_for(k, n):
        w = torch.randn(n, k, device=device, dtype=torch.float16) / k**0.5
        qw, ws = int8q.quantize_weight(w)
        return qw, ws, w

    rows, records = common.sweep_by_m(args, device, methods, weights_for)
    machine = common.machine_info(device)
    slug = common.card_slug(machine["device_name"])
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, f"dispatch_{slug}.json"), {"machine": machine, "results": records})
    table = common.markdown_table(["K x N", "M", "fp16 us", "matmul", "matmul no-PDL", "two-pass", "sm80 two-pass"], rows, 1)
    common.write_text(os.path.join(args.out, f"dispatch_{slug}.md"),
                      "# int8q kernel paths by M\n\n" + common.machine_markdown(machine, common.TIMING_NOTE + common.ROUNDS_NOTE) + "\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
