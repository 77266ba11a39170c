"""How fast is int8q's W8A8 linear layer, at every token count, against what users have today?

For each (K, N) linear-layer shape and each token count M it times, in one process on one card:
F.linear in fp16 (cuBLAS, the reference every speedup is taken against), torch._int_mm on int8
codes, a plain-torch W8A8 pipeline, torch._scaled_mm in fp8 e4m3 with tensorwise scales, a
plain Triton int8 GEMM (raw, and behind a Triton quantize kernel), and int8q.matmul (dynamic
per-token and static per-tensor activations) and int8q.scaled_mm. Every method's output is
checked against fp16 before it is timed; a wrong answer is reported, not timed.

Writes matmul_<card>.json, .md and .png into --out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import common

FP8 = torch.float8_e4m3fn
INT8_TOLERANCE = 5e-2  # int8 per-token x per-channel lands near 1.2% on normal data
FP8_TOLERANCE = 1e-1  # e4m3 keeps 3 mantissa bits: near 4% on normal data


def quantize_per_row(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes per row and their float32 scales ([rows, 1]), in plain torch."""
    scale = (t.abs().amax(dim=1, keepdim=True).float() / 127.0).clamp_min(1e-12)
    return (t.float() / scale).round().clamp(-127, 127).to(torch.int8), scale


def quantize_fp8_tensorwise(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values and the single float32 scale (0-d) that dequantizes them."""
    scale = t.abs().amax().float() / torch.finfo(FP8).max
    return (t.float() / scale).to(FP8), scale


def torch_w8a8_linear(x: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """The W8A8 linear layer in eager torch: per-token quantize, torch._int_mm, dequantize."""
    m = x.shape[0]
    xq, x_scale = quantize_per_row(x)
    if m <= 16:  # torch._int_mm refuses M <= 16: pad with zero rows
        xq = F.pad(xq, (0, 0, 0, 17 - m))
    acc = torch._int_mm(xq, qweight.t())[:m]
    return (acc.float() * x_scale * w_scale).to(x.dtype)


@dataclass
class Method:
    key: str
    label: str
    column: str  # short name for tables
    weights: str  # which weight form it reads: "fp16", "int8" or "fp8"
    acts: str  # which activation form it reads: "fp16", "int8" or "fp8"
    run: Optional[Callable]  # run(weight tuple, activation tuple) -> output
    bytes_per_elem: Tuple[int, int, int]  # weight, activation, output
    tolerance: float = INT8_TOLERANCE
    may_refuse: bool = False  # a baseline that rejects some shapes (recorded, not an error)
    as_float: Optional[Callable] = None  # output -> what is compared with fp16, when it differs
    unavailable: str = ""

    def bytes(self, m: int, k: int, n: int) -> Tuple[int, int]:
        """(bytes read, bytes written), scales left out."""
        w, a, o = self.bytes_per_elem
        return w * n * k + a * m * k, o * m * n


def build_methods(int8q, int8q_why: str, triton_int8, triton_why: str) -> List[Method]:
    def dequantize_int32(out, w, x):
        return out.float() * x[1] * w[1].reshape(1, -1)

    methods = [
        Method("fp16", "F.linear fp16 (cuBLAS)", "fp16", "fp16", "fp16",
               lambda w, x: F.linear(x[0], w[0]), (2, 2, 2)),
        Method("int_mm", "torch._int_mm raw (int8 in, int32 out)", "_int_mm", "int8", "int8",
               lambda w, x: torch._int_mm(x[0], w[0].t()), (1, 1, 4), may_refuse=True, as_float=dequantize_int32),
        Method("torch_w8a8", "plain-torch W8A8 (quantize + _int_mm + dequantize)", "torch W8A8", "int8", "fp16",
               lambda w, x: torch_w8a8_linear(x[0], w[0], w[1].reshape(1, -1)), (1, 2, 2)),
        Method("fp8_scaled_mm", "torch._scaled_mm fp8 e4m3 tensorwise raw", "fp8 raw", "fp8", "fp8",
               lambda w, x: torch._scaled_mm(x[0], w[0].t(), scale_a=x[1], scale_b=w[1], out_dtype=torch.float16),
               (1, 1, 2), tolerance=FP8_TOLERANCE, may_refuse=True),
        Method("triton_int8", "Triton int8 GEMM raw (scales in epilogue)", "triton raw", "int8", "int8",
               lambda w, x: triton_int8.int8_gemm(x[0], w[0], x[1].reshape(-1), w[1]), (1, 1, 2),
               may_refuse=True, unavailable=triton_why),
        Method("triton_w8a8", "Triton W8A8 (quantize kernel + int8 GEMM)", "triton W8A8", "int8", "fp16",
               lambda w, x: triton_int8.w8a8_linear(x[0], w[0], w[1]), (1, 2, 2),
               may_refuse=True, unavailable=triton_why),
        Method("int8q_dynamic", "int8q.matmul dynamic per-token", "int8q dyn", "int8", "fp16",
               lambda w, x: int8q.matmul(x[0], w[0], w[1]), (1, 2, 2), unavailable=int8q_why),
        Method("int8q_static", "int8q.matmul static per-tensor", "int8q static", "int8", "fp16",
               lambda w, x: int8q.matmul(x[0], w[0], w[1], x_scale=x[1]), (1, 2, 2), unavailable=int8q_why),
        Method("int8q_scaled_mm", "int8q.scaled_mm raw (int8 in, fp16 out)", "int8q raw", "int8", "int8",
               lambda w, x: int8q.scaled_mm(x[0], w[0], x[1].reshape(-1), w[1], out_dtype=torch.float16),
               (1, 1, 2), unavailable=int8q_why),
    ]
    return methods


class ShapeInputs:
    """The weights of one (K, N) layer in every form the methods read, each with rotation copies."""

    def __init__(self, k: int, n: int, device: torch.device, gen: torch.Generator):
        w16 = (torch.randn(n, k, device=device, generator=gen) / math.sqrt(k)).half()
        qweight, w_scale = quantize_per_row(w16)
        self.w16 = w16
        self.rotations = {
            "fp16": common.Rotation(w16),
            "int8": common.Rotation(qweight, w_scale.reshape(-1)),
            "fp8": common.Rotation(*quantize_fp8_tensorwise(w16)),
        }


class TokenInputs:
    """Activations for one M, in every form the methods read, each with rotation copies.

    The fp16 form carries the per-tensor static scale a calibration would give (absmax / 127).
    """

    def __init__(self, m: int, k: int, device: torch.device, gen: torch.Generator):
        x16 = torch.randn(m, k, device=device, generator=gen).half()
        self.x16 = x16
        static_scale = (x16.abs().amax().float() / 127.0).reshape(1)
        self.rotations = {
            "fp16": common.Rotation(x16, static_scale),
            "int8": common.Rotation(*quantize_per_row(x16)),
            "fp8": common.Rotation(*quantize_fp8_tensorwise(x16)),
        }


class ContextLost(RuntimeError):
    pass


def measure(method: Method, weights: ShapeInputs, tokens: TokenInputs, ref: torch.Tensor,
            m: int, k: int, n: int, args, device: torch.device, rep_ms: float) -> Dict[str, object]:
    record: Dict[str, object] = {"method": method.key, "M": m, "K": k, "N": n}
    if method.unavailable:
        return {**record, "status": "unavailable", "note": method.unavailable}
    read, written = method.bytes(m, k, n)
    copies = common.rotation_copies(read + written, device, bytes_per_copy=read)
    try:
        arg_sets = list(zip(weights.rotations[method.weights].take(copies),
                            tokens.rotations[method.acts].take(copies)))
        w, x = arg_sets[0]
        out = method.run(w, x)
        torch.cuda.synchronize(device)
        err = 0.0 if method.key == "fp16" else common.rel_err(method.as_float(out, w, x) if method.as_float else out, ref)
        del out
        if not err < method.tolerance:
            return {**record, "status": "mismatch", "rel_err": err,
                    "note": f"relative error {err:.3g} against fp16 exceeds {method.tolerance:g}: not timed"}
        timing = common.time_cuda(common.cycle_calls(method.run, arg_sets), args.warmup_ms, rep_ms)
    except Exception as exc:  # a refusal or a failure is a result too; keep sweeping
        if not common.cuda_context_ok(device):
            raise ContextLost(f"{method.key} at M={m} K={k} N={n}: {common.short_error(exc)}") from exc
        torch.cuda.empty_cache()
        status = "refused" if method.may_refuse else "error"
        return {**record, "status": status, "note": common.short_error(exc)}
    seconds = timing.median_us * 1e-6
    return {
        **record, "status": "ok", "us": timing.median_us, "p20_us": timing.p20_us, "p80_us": timing.p80_us,
        "samples": timing.samples, "calls_per_sample": timing.calls_per_sample, "copies": copies,
        "bytes": read + written, "tops": 2.0 * m * n * k / seconds / 1e12, "gbs": (read + written) / seconds / 1e9,
        "rel_err": err,
    }


def median_round(recs: List[Dict[str, object]], method: Method, m: int, k: int, n: int) -> Dict[str, object]:
    """One method's record from its rounds: the round with the median time (the lower middle
    of an even count), with every round's time kept; the first failure if any round failed."""
    if not recs:
        return {"method": method.key, "M": m, "K": k, "N": n, "status": "skipped",
                "note": "not reached: the CUDA context was lost"}
    bad = [r for r in recs if r["status"] != "ok"]
    if bad:
        return bad[0]
    return {**common.median_round(recs, key=lambda r: r["us"]), "round_us": [r["us"] for r in recs]}


# ---------------------------------------------------------------- reporting


def cell(rec: Optional[Dict[str, object]], with_speedup: bool) -> str:
    if rec is None:
        return ""
    status = rec["status"]
    if status == "ok":
        text = common.fmt_us(rec["us"])
        if with_speedup and rec.get("speedup_vs_fp16"):
            text += f" ({rec['speedup_vs_fp16']:.2f}x)"
        return text
    if status == "mismatch":
        return f"**MISMATCH** err {rec['rel_err']:.1e}"
    if status == "error":
        return "**ERROR**"
    return {"refused": "refused", "unavailable": "n/a", "skipped": "skipped"}[status]


def throughput_cell(rec: Optional[Dict[str, object]]) -> str:
    if rec is None or rec["status"] != "ok":
        return cell(rec, with_speedup=False)
    return f"{rec['tops']:.0f} / {rec['gbs']:.0f}" if rec["tops"] >= 10 else f"{rec['tops']:.2f} / {rec['gbs']:.0f}"


def markdown_report(payload: Dict[str, object], methods: List[Method]) -> str:
    machine = payload["machine"]
    records = payload["results"]
    out = [f"# int8q W8A8 matmul benchmark: {machine['device_name']}\n",
           common.machine_markdown(machine, common.TIMING_NOTE + common.ROUNDS_NOTE),
           "\nCells: time in microseconds (speedup over fp16 `F.linear` in the same run). "
           "Every method's output was checked against fp16 first (relative Frobenius error "
           f"< {INT8_TOLERANCE:g}, fp8 < {FP8_TOLERANCE:g}); a mismatch is shown instead of a time.\n"]
    for k, n in payload["config"]["shapes"]:
        by_m: Dict[int, Dict[str, Dict]] = {}
        for rec in records:
            if rec["K"] == k and rec["N"] == n:
                by_m.setdefault(rec["M"], {})[rec["method"]] = rec
        if not by_m:
            continue
        out.append(f"\n## K={k}, N={n} (weights: fp16 {common.mib(2 * n * k)}, int8 {common.mib(n * k)})\n\n")
        header = ["M"] + [f"{mt.column} us" if mt.key == "fp16" else mt.column for mt in methods]
        rows = [[m] + [cell(by_m[m].get(mt.key), mt.key != "fp16") for mt in methods] for m in sorted(by_m)]
        out.append(common.markdown_table(header, rows, align_right_from=0))
        out.append("\nThroughput, TOP/s / GB/s:\n\n")
        rows = [[m] + [throughput_cell(by_m[m].get(mt.key)) for mt in methods] for m in sorted(by_m)]
        out.append(common.markdown_table(["M"] + [mt.column for mt in methods], rows, align_right_from=0))
    out.append("\n## Methods\n\n")
    for mt in methods:
        out.append(f"- **{mt.column}**: {mt.label}.\n")
    notes = {}
    for rec in records:
        if rec["status"] in ("error", "refused", "unavailable", "mismatch") and rec.get("note"):
            notes.setdefault((rec["method"], rec["status"]), (rec, rec["note"]))
    if notes:
        out.append("\n## Refusals, errors and mismatches (first of each)\n\n")
        for (key, status), (rec, note) in notes.items():
            out.append(f"- {key} {status} at M={rec['M']} K={rec['K']} N={rec['N']}: {note}\n")
    return "".join(out)


def speedup_summary(records: List[Dict[str, object]], methods: List[Method], shapes) -> str:
    """A compact plain-text table of speedups over fp16, printed last so a log tail shows it."""
    timed = [mt for mt in methods if mt.key != "fp16"]
    width = max(len(mt.column) for mt in timed) + 1
    lines = ["== speedup over fp16 F.linear (x; ref=refused, MISM=mismatch, ERR=error, n/a, skip)",
             f"{'K x N':>12} {'M':>5} {'fp16 us':>9}" + "".join(f"{mt.column:>{width}}" for mt in timed)]
    short = {"refused": "ref", "mismatch": "MISM", "error": "ERR", "unavailable": "n/a", "skipped": "skip"}
    index = {(r["K"], r["N"], r["M"], r["method"]): r for r in records}
    for k, n in shapes:
        for m in sorted({r["M"] for r in records if r["K"] == k and r["N"] == n}):
            base = index.get((k, n, m, "fp16"))
            line = f"{f'{k}x{n}':>12} {m:>5} {common.fmt_us(base['us']) if base and base['status'] == 'ok' else '-':>9}"
            for mt in timed:
                rec = index.get((k, n, m, mt.key))
                if rec is None:
                    text = ""
                elif rec["status"] == "ok":
                    text = f"{rec['speedup_vs_fp16']:.2f}" if rec.get("speedup_vs_fp16") else "-"
                else:
                    text = short[rec["status"]]
                line += f"{text:>{width}}"
            lines.append(line)
    return "\n".join(lines)


def progress_line(k: int, n: int, m: int, recs: List[Dict[str, object]], methods: List[Method]) -> str:
    parts = []
    for mt, rec in zip(methods, recs):
        if rec["status"] == "ok":
            speed = f" {rec['speedup_vs_fp16']:.2f}x" if mt.key != "fp16" and rec.get("speedup_vs_fp16") else ""
            parts.append(f"{mt.column} {common.fmt_us(rec['us'])}{speed}")
        else:
            parts.append(f"{mt.column} {rec['status'].upper()}")
    return f"K={k} N={n} M={m}: " + " | ".join(parts)


def write_outputs(payload, methods, paths, plot: bool) -> None:
    common.write_json(paths["json"], payload)
    common.write_text(paths["md"], markdown_report(payload, methods))
    if plot:
        try:
            import plot as plotting
        except ImportError as exc:
            print(f"note: no plot ({exc})", flush=True)
            return
        plotting.plot_matmul(payload, paths["png"])


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=common.parse_int_list, default=None,
                        help="comma-separated token counts (default: 1,2,4,...,8192)")
    parser.add_argument("--shapes", type=common.parse_shapes, default=None,
                        help="comma-separated KxN layer shapes (default: 4096x4096,4096x14336,14336x4096,8192x28672)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated method keys to time besides fp16 (default: all): fp16, int_mm, torch_w8a8, "
                             "fp8_scaled_mm, triton_int8, triton_w8a8, int8q_dynamic, int8q_static, int8q_scaled_mm")
    parser.add_argument("--quick", action="store_true",
                        help=f"M in {common.QUICK_TOKEN_COUNTS} and shorter timings (10 ms warm-up, 30 ms timed)")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="stop starting new cases after this many seconds and write what was measured (0: no limit)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    common.add_rounds_arg(parser)
    common.add_timing_args(parser, warmup_ms=25.0, rep_ms=100.0)
    args = parser.parse_args(argv)
    common.apply_quick_timings(args, parser)
    args.m = args.m or (common.QUICK_TOKEN_COUNTS if args.quick else common.TOKEN_COUNTS)
    args.shapes = args.shapes or common.LINEAR_SHAPES
    common.check_rounds(args, parser)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.require_cuda("bench_matmul.py")
    started = time.monotonic()
    int8q, int8q_why = common.load_int8q()
    triton_int8, triton_why = common.load_triton_int8()
    methods = build_methods(int8q, int8q_why, triton_int8, triton_why)
    if args.methods:
        wanted = {"fp16"} | set(args.methods.split(","))
        unknown = wanted - {mt.key for mt in methods}
        if unknown:
            sys.exit(f"bench_matmul.py: unknown method(s) {sorted(unknown)}")
        methods = [mt for mt in methods if mt.key in wanted]
    for why in sorted({mt.unavailable for mt in methods if mt.unavailable}):
        print(f"note: {why}; those methods are reported as n/a", flush=True)

    machine = common.machine_info(device)
    slug = common.card_slug(machine["device_name"])
    paths = {ext: os.path.join(args.out, f"matmul_{slug}.{ext}") for ext in ("json", "md", "png")}
    payload = {
        "benchmark": "matmul",
        "machine": machine,
        "config": {"shapes": [list(s) for s in args.shapes], "M": args.m, "warmup_ms": args.warmup_ms,
                   "rep_ms": args.rep_ms, "rounds": args.rounds, "seed": args.seed,
                   "timing": common.TIMING_NOTE + common.ROUNDS_NOTE},
        "methods": {mt.key: mt.label for mt in methods},
        "columns": {mt.key: mt.column for mt in methods},
        "results": [],
    }
    print(f"{machine['device_name']}: torch {machine['torch']}, CUDA {machine['cuda']}, "
          f"int8q {machine['int8q_commit']}", flush=True)

    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    failed = False
    context_lost = ""
    def over_budget() -> bool:
        return args.budget_s > 0 and time.monotonic() - started > args.budget_s

    for k, n in args.shapes:
        weights = None if context_lost or over_budget() else ShapeInputs(k, n, device, gen)
        for m in args.m:
            if context_lost or over_budget():
                note = context_lost or f"time budget of {args.budget_s:.0f} s spent"
                payload["results"] += [{"method": mt.key, "M": m, "K": k, "N": n, "status": "skipped", "note": note}
                                       for mt in methods]
                continue
            tokens = TokenInputs(m, k, device, gen)
            ref = F.linear(tokens.x16, weights.w16)
            # Every method is timed in args.rounds rounds, each starting one method later in the
            # order, and keeps the round with its median time: a stall of the card during one
            # round, or the first method after fp16 running cold, moves no reported number.
            rounds: List[Dict[str, Dict[str, object]]] = []
            for r in range(args.rounds):
                got: Dict[str, Dict[str, object]] = {}
                for mt in common.rotated(methods, r):
                    try:
                        got[mt.key] = measure(mt, weights, tokens, ref, m, k, n, args, device,
                                              args.rep_ms / args.rounds)
                    except ContextLost as exc:
                        context_lost = f"CUDA context lost: {exc}"
                        print(f"FATAL: {context_lost}; the remaining cases are skipped", flush=True)
                        got[mt.key] = {"method": mt.key, "M": m, "K": k, "N": n, "status": "error",
                                       "note": str(exc)}
                        break
                rounds.append(got)
                if context_lost:
                    break
            recs = [median_round([rd[mt.key] for rd in rounds if mt.key in rd], mt, m, k, n)
                    for mt in methods]
            base = recs[0] if recs[0]["status"] == "ok" else None
            for rec in recs:
                if base and rec["status"] == "ok":
                    rec["speedup_vs_fp16"] = base["us"] / rec["us"]
                failed |= rec["status"] in ("error", "mismatch")
            payload["results"] += recs
            print(progress_line(k, n, m, recs, methods), flush=True)
            common.write_json(paths["json"], payload)
            del tokens, ref
        del weights
        torch.cuda.empty_cache()
        write_outputs(payload, methods, paths, plot=not args.no_plot)

    print(f"\nwrote {', '.join(p for ext, p in paths.items() if ext != 'png' or not args.no_plot)} "
          f"in {time.monotonic() - started:.0f} s\n")
    print(speedup_summary(payload["results"], methods, args.shapes))
    if context_lost:
        return 3
    skipped = sum(r["status"] == "skipped" for r in payload["results"])
    if skipped:
        print(f"INCOMPLETE: {skipped} cases skipped for the time budget of {args.budget_s:.0f} s")
    return 1 if failed else 4 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
