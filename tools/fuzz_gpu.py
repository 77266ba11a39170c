#!/usr/bin/env python3
"""Fuzz int8q's CUDA kernels against int8q.reference with random op calls.

Each case draws an op (matmul dynamic / static / static+shift, scaled_mm per-row / per-tensor,
quantize_activation, quantize_weight), shapes (M 0..4096 skewed small; K, N 1..8192 with LLM
sizes, tails and odd sizes), dtypes, weight granularity, bias, layouts (strided, transposed,
padded rows, misaligned pointers, 3-D) and data (outlier channels, zero rows, values near
fp16's max, constant rows, tiny values, rounding ties, NaN/Inf rows). The reference runs on
the same device (its integer product is float64: exact). The tolerance is printed
(tools/op_cases.py, TOLERANCE); any mismatch or exception makes the exit status 1.

Case i of seed S is reproducible on its own: python tools/fuzz_gpu.py --seed S --case i
Exit status: 0 all cases pass, 1 a case failed, 2 no CUDA device or no CUDA kernels.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import op_cases  # noqa: E402

import int8q  # noqa: E402

# Work bounds per case (multiply-accumulates); the generic fallback GEMM is scalar, so smaller.
BOUNDS = {
    "cuda": dict(max_macs=2**37, max_macs_generic=2**31, max_elements=2**26),
    "cpu": dict(max_macs=2**24, max_macs_generic=2**22, max_elements=2**20),
}


def case_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % 2**62


def make_case(seed: int, index: int, bounds: dict) -> op_cases.OpCase:
    s = case_seed(seed, index)
    return op_cases.sample_case(random.Random(s), s, **bounds)


def poison_allocator(nbytes: int, device: torch.device) -> None:
    """Free a block of NaN bytes (0xFF) of the output's size, which the op's output is likely
    to reuse from the caching allocator: an element the kernel never writes then shows as NaN."""
    if device.type == "cuda" and nbytes > 0:
        torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(0xFF)


def output_nbytes(case: op_cases.OpCase) -> int:
    if case.op == "quantize_weight":
        return case.n * case.k
    if case.op == "quantize_activation":
        return case.m * case.k
    return case.m * case.n * op_cases.out_dtype_of(case).itemsize


def run_one(case: op_cases.OpCase, device: torch.device):
    """(Verdict, seconds, fatal); an exception in the op or the reference is a failed case."""
    t0 = time.perf_counter()
    stage = "building inputs"
    try:
        args = op_cases.build(case, device)
        stage = "int8q.reference"
        ref = op_cases.expected(case, args)
        stage = "int8q op"
        poison_allocator(output_nbytes(case), device)
        got = op_cases.run(case, args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # a kernel fault surfaces here, attributed to the op
        stage = "comparison"
        verdict = op_cases.check(case, args, got, ref)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 - any exception is a finding, reported with its case
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        verdict = op_cases.Verdict(False, False, f"{stage} raised {type(e).__name__}: {msg}")
        # A device fault (illegal address, launch failure) poisons the CUDA context: stop there.
        fatal = device.type == "cuda" and (type(e).__name__ == "AcceleratorError" or "CUDA error" in msg)
        return verdict, time.perf_counter() - t0, fatal
    return verdict, time.perf_counter() - t0, False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 pass, 1 a case failed, 2 no CUDA device / kernels.")
    p.add_argument("--cases", type=int, default=1000, help="number of random cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="run seed; case i uses a seed derived from (seed, i)")
    p.add_argument("--case", type=int, action="append", default=[],
                   help="run only this case index (repeatable): reproduces a reported mismatch")
    p.add_argument("--out", help="write a JSON summary here")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default); cpu checks the CPU kernels and this script's logic, with smaller shapes")
    p.add_argument("--verbose", action="store_true", help="print every case")
    args = p.parse_args(argv)

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("fuzz_gpu.py: no CUDA device is visible (torch.cuda.is_available() is False). "
                  "Run it on a GPU machine, or pass --device cpu to exercise the CPU kernels.", file=sys.stderr)
            return 2
        if not int8q.has_cuda_kernels():
            print("fuzz_gpu.py: this build of int8q has no CUDA kernels (built CPU-only); "
                  "rebuild where nvcc is present.", file=sys.stderr)
            return 2
    device = torch.device(args.device)
    bounds = BOUNDS[args.device]
    indices = args.case or list(range(args.cases))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"int8q fuzz: {len(indices)} cases, seed {args.seed}, device {name}, torch {torch.__version__}")
    print(f"tolerance: {op_cases.TOLERANCE}")
    print(f"bounds per case: {bounds}")

    counts = collections.Counter()
    seconds = collections.Counter()
    paths = collections.Counter()
    failures = []
    exact = 0
    t_start = time.perf_counter()
    for done, i in enumerate(indices, 1):
        case = make_case(args.seed, i, bounds)
        verdict, dt, fatal = run_one(case, device)
        key = f"{case.op}/{case.mode}"
        counts[key] += 1
        seconds[key] += dt
        if case.op in ("matmul", "scaled_mm"):
            small_m = "M<=64" if case.m <= 64 else "M>64"
            paths["generic GEMM (K%16 or misaligned)" if case.uses_generic_gemm() else f"tensor-core/fused, {small_m}"] += 1
        exact += verdict.exact
        repro = f"python tools/fuzz_gpu.py --seed {args.seed} --case {i}" + (" --device cpu" if args.device == "cpu" else "")
        if not verdict.ok:
            failures.append({"index": i, "seed": args.seed, "case_seed": case.seed, "case": case.describe(),
                             "detail": verdict.detail, "reproduce": repro})
            print(f"MISMATCH case {i}: {case.describe()}\n  {verdict.detail}\n  reproduce: {repro}", flush=True)
        elif args.verbose:
            print(f"ok {i} ({dt * 1e3:.1f} ms{', exact' if verdict.exact else ''}): {case.describe()}")
        if fatal:
            print(f"CUDA context is unusable after case {i}; stopping after {done} of {len(indices)} cases.", flush=True)
            indices = indices[:done]
            break
        if done % 100 == 0:
            print(f"  {done}/{len(indices)} cases, {len(failures)} mismatches, "
                  f"{time.perf_counter() - t_start:.1f} s", flush=True)
    elapsed = time.perf_counter() - t_start

    print("\ncases by op/mode (count, seconds):")
    for key in sorted(counts):
        print(f"  {key:32s} {counts[key]:5d} {seconds[key]:8.2f}")
    print("GEMM paths (by shape; the dispatcher decides):")
    for key in sorted(paths):
        print(f"  {key:40s} {paths[key]:5d}")
    print(f"\n{len(indices)} cases, {len(failures)} mismatches, {exact} bit-identical to the reference, "
          f"{elapsed:.1f} s on {name}")
    print(f"tolerance: {op_cases.TOLERANCE}")
    for f in failures:
        print(f"  FAILED case {f['index']}: {f['case']} -- {f['reproduce']}")

    if args.out:
        summary = {
            "device": name,
            "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "int8q": int8q.__version__,
            "seed": args.seed,
            "cases": len(indices),
            "mismatches": len(failures),
            "bit_identical": exact,
            "seconds": round(elapsed, 2),
            "tolerance": op_cases.TOLERANCE,
            "bounds": bounds,
            "by_op": {k: {"count": counts[k], "seconds": round(seconds[k], 3)} for k in sorted(counts)},
            "gemm_paths": dict(paths),
            "failures": failures,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)
        print(f"summary written to {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
