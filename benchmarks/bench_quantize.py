"""Does int8q's standalone activation-quantize kernel run at memory speed?

Times int8q.quantize_activation (dynamic per-row scales, fp16 in) over M x K activations and
compares its bandwidth (fp16 read + int8 codes and float32 scales written) with a
device-to-device copy of the same fp16 tensor (x.clone(), bytes read + written) in the same run.
The target is 80% of copy bandwidth from 8M elements up.

Writes quantize_<card>.json and .md into --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Tuple

import torch

import common

SIZES: List[Tuple[int, int]] = [(1, 4096), (16, 4096), (128, 4096), (2048, 4096), (8192, 4096),
                                (4096, 14336), (16384, 8192)]
QUICK_SIZES: List[Tuple[int, int]] = [(1, 4096), (2048, 4096), (16384, 8192)]
TARGET_FRACTION = 0.8
TARGET_FROM_ELEMENTS = 8 * 2**20
TOLERANCE = 5e-2


def quantize_bytes(m: int, k: int) -> int:
    return m * k * 2 + m * k + m * 4


def copy_bytes(m: int, k: int) -> int:
    return 2 * m * k * 2


def check(int8q, x: torch.Tensor) -> str:
    """'' when the kernel's output is sane, else what is wrong with it."""
    xq, x_scale = int8q.quantize_activation(x)
    torch.cuda.synchronize()
    if xq.dtype != torch.int8 or xq.shape != x.shape or x_scale.shape != x.shape[:-1]:
        return f"wrong outputs: {xq.dtype} {tuple(xq.shape)}, scale {tuple(x_scale.shape)}"
    want_scale = x.abs().amax(dim=-1).float() / 127.0
    scale_err = common.rel_err(x_scale, want_scale)
    if not scale_err < 1e-5:
        return f"scales differ from absmax/127 (relative error {scale_err:.3g})"
    err = common.rel_err(xq.float() * x_scale[:, None], x)
    if not err < TOLERANCE:
        return f"dequantized codes differ from x (relative error {err:.3g} >= {TOLERANCE:g})"
    return ""


def time_rounds(calls: Dict[str, Tuple[object, int]], tensors: common.Rotation, device,
                args) -> Dict[str, common.Timing]:
    """Each call (name -> (function, bytes per call)) on inputs rotated past L2, timed in
    args.rounds rounds in an order rotated by one per round; the median round of each."""
    fns = {name: common.cycle_calls(call, tensors.take(common.rotation_copies(nbytes, device)))
           for name, (call, nbytes) in calls.items()}
    return {name: common.median_round(ts, key=lambda t: t.median_us)
            for name, ts in common.time_in_rounds(fns, args).items()}


def markdown_report(payload: Dict[str, object]) -> str:
    rows = []
    for r in payload["results"]:
        size = f"{r['M']} x {r['K']}"
        if r["status"] != "ok":
            rows.append([size, f"{r['M'] * r['K'] / 2**20:.2f}", f"**{r['status'].upper()}**", "", "", "", "", ""])
            continue
        big = r["M"] * r["K"] >= TARGET_FROM_ELEMENTS
        meets = ("yes" if r["fraction_of_copy"] >= TARGET_FRACTION else "**no**") if big else ""
        rows.append([size, f"{r['M'] * r['K'] / 2**20:.2f}", common.fmt_us(r["us"]), f"{r['gbs']:.0f}",
                     common.fmt_us(r["copy_us"]), f"{r['copy_gbs']:.0f}", f"{100 * r['fraction_of_copy']:.0f}%", meets])
    header = ["M x K", "elements (Mi)", "quantize us", "quantize GB/s", "copy us", "copy GB/s", "% of copy",
              f">= {TARGET_FRACTION:.0%} (from 8M elements)"]
    notes = [f"- {r['M']} x {r['K']}: {r['note']}\n" for r in payload["results"] if r.get("note")]
    return "".join([
        f"# int8q activation quantize benchmark: {payload['machine']['device_name']}\n\n",
        common.machine_markdown(payload["machine"], common.TIMING_NOTE + common.ROUNDS_NOTE),
        "\n`int8q.quantize_activation(x)` (dynamic per-row scales, fp16 in): bytes are the fp16 read, "
        "the int8 codes and the float32 scales written. Copy: `x.clone()`, bytes read + written.\n\n",
        common.markdown_table(header, rows, align_right_from=1),
        ("\n" + "".join(notes)) if notes else "",
    ])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=common.parse_shapes, default=None,
                        help="comma-separated MxK sizes (default: " + ",".join(f"{m}x{k}" for m, k in SIZES) + ")")
    parser.add_argument("--quick", action="store_true", help="three sizes, shorter timings")
    common.add_timing_args(parser, warmup_ms=25.0, rep_ms=100.0)
    common.add_rounds_arg(parser)
    args = parser.parse_args(argv)
    common.check_rounds(args, parser)
    common.apply_quick_timings(args, parser)
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.require_cuda("bench_quantize.py")
    int8q, why = common.load_int8q()
    if int8q is None:
        sys.exit(f"bench_quantize.py: {why}; build int8q with its CUDA kernels first "
                 "(pip install --no-build-isolation -e . on a machine with nvcc)")
    started = time.monotonic()
    machine = common.machine_info(device)
    slug = common.card_slug(machine["device_name"])
    payload = {"benchmark": "quantize", "machine": machine,
               "config": {"sizes": [list(s) for s in args.sizes], "warmup_ms": args.warmup_ms,
                          "rep_ms": args.rep_ms, "rounds": args.rounds, "seed": args.seed,
                          "timing": common.TIMING_NOTE + common.ROUNDS_NOTE},
               "results": []}
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    failed = False
    for m, k in args.sizes:
        record: Dict[str, object] = {"M": m, "K": k}
        x = torch.randn(m, k, device=device, generator=gen).half()
        rotation = common.Rotation(x)
        try:
            problem = check(int8q, x)
            if problem:
                record.update(status="mismatch", note=problem + ": not timed")
            else:
                timed = time_rounds({"quantize": (int8q.quantize_activation, quantize_bytes(m, k)),
                                     "copy": (torch.Tensor.clone, copy_bytes(m, k))}, rotation, device, args)
                quant, copy = timed["quantize"], timed["copy"]
                gbs = quantize_bytes(m, k) / quant.median_us / 1e3
                copy_gbs = copy_bytes(m, k) / copy.median_us / 1e3
                record.update(status="ok", us=quant.median_us, p20_us=quant.p20_us, p80_us=quant.p80_us,
                              gbs=gbs, copy_us=copy.median_us, copy_gbs=copy_gbs, fraction_of_copy=gbs / copy_gbs)
        except Exception as exc:  # record it and go on with the other sizes
            record.update(status="error", note=common.short_error(exc))
            if not common.cuda_context_ok(device):
                payload["results"].append(record)
                print(f"FATAL: CUDA context lost at {m} x {k}: {record['note']}", flush=True)
                failed = True
                break
        failed |= record["status"] != "ok"
        payload["results"].append(record)
        del x, rotation
        if record["status"] == "ok":
            print(f"{m:>6} x {k:<6} quantize {common.fmt_us(record['us']):>8} us {record['gbs']:7.0f} GB/s | "
                  f"copy {common.fmt_us(record['copy_us']):>8} us {record['copy_gbs']:7.0f} GB/s | "
                  f"{100 * record['fraction_of_copy']:5.1f}% of copy", flush=True)
        else:
            print(f"{m:>6} x {k:<6} {record['status'].upper()}: {record['note']}", flush=True)

    json_path = os.path.join(args.out, f"quantize_{slug}.json")
    md_path = os.path.join(args.out, f"quantize_{slug}.md")
    common.write_json(json_path, payload)
    common.write_text(md_path, markdown_report(payload))
    print(f"\nwrote {json_path}, {md_path} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
