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
import torch.nn.functional as F

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
    rows, records = [], []
    for k, n in args.shapes:
        w = torch.randn(n, k, device=device, dtype=torch.float16) / k**0.5
        qw, ws = int8q.quantize_weight(w)
        for m in args.m:
            x = torch.randn(m, k, device=device, dtype=torch.float16)
            per_call = n * k * 3 + m * k * 2
            copies = common.rotation_copies(per_call, device, bytes_per_copy=n * k * 3)
            sets = common.Rotation(x, qw, ws, w).take(copies)
            ref = F.linear(x, w)
            all_methods = {"fp16": lambda x, qw, ws, w: F.linear(x, w), **methods}
            row = [f"{k}x{n}", m]
            rec = {"k": k, "n": n, "m": m}
            live = {}
            for name, fn in all_methods.items():
                err = 0.0 if name == "fp16" else common.rel_err(fn(x, qw, ws, w), ref)
                if err > 5e-2:
                    rec[name] = None
                    rec[name + "_error"] = err
                else:
                    live[name] = fn
            # Rounds with the order rotated by one each time; each method keeps its median
            # round, so neither a stall of the card nor the order of the columns moves a number.
            fns = {name: common.cycle_calls(fn, sets) for name, fn in live.items()}
            times = {name: [t.median_us for t in ts] for name, ts in common.time_in_rounds(fns, args).items()}
            med = {name: common.median_round(ts) for name, ts in times.items()}
            fp16 = med.get("fp16")
            rec["fp16_us"] = fp16
            row.append(common.fmt_us(fp16) if fp16 else "MISMATCH")
            for name in methods:
                if name not in med:
                    row.append(f"MISMATCH {rec[name + '_error']:.2g}")
                    continue
                rec[name + "_us"] = med[name]
                rec[name + "_round_us"] = times[name]
                row.append(f"{common.fmt_us(med[name])} ({fp16 / med[name]:.2f}x)" if fp16 else common.fmt_us(med[name]))
            rows.append(row)
            records.append(rec)
            print(" | ".join(str(c) for c in row), flush=True)
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
