"""Run a few int8q calls (and the fp16 / fp8 baselines) once each, for a profiler such as
Nsight Compute to look at: `ncu --nvtx ... python3 tools/profile_cases.py CASE...`.

A case is WHAT:M:K:N with WHAT one of matmul (dynamic), static, raw (scaled_mm), quant
(quantize_activation of an M x K fp16 activation), fp16 (F.linear) or fp8 (_scaled_mm,
tensorwise). Each case runs once unprofiled (warm-up, module loading) inside an NVTX range
named "warm", then once inside an NVTX range named after the case.
"""
import sys

import torch
import torch.nn.functional as F

import int8q


def build(what, m, k, n):
    dev = "cuda"
    x = torch.randn(m, k, device=dev, dtype=torch.float16)
    if what == "quant":
        return lambda: int8q.quantize_activation(x)
    w = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
    if what == "fp16":
        return lambda: F.linear(x, w)
    if what == "fp8":
        x8, w8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        one = torch.ones((), device=dev)
        return lambda: torch._scaled_mm(x8, w8.t(), one, one, out_dtype=torch.float16)
    qw, ws = int8q.quantize_weight(w)
    if what == "matmul":
        return lambda: int8q.matmul(x, qw, ws)
    if what == "static":
        s = torch.tensor([x.abs().max().item() / 127.0], device=dev)
        return lambda: int8q.matmul(x, qw, ws, s)
    if what == "raw":
        xq, xs = int8q.quantize_activation(x)
        return lambda: int8q.scaled_mm(xq, qw, xs, ws, None, torch.float16)
    raise SystemExit(f"unknown case kind {what!r}")


def main(argv):
    for case in argv:
        what, m, k, n = case.split(":")
        fn = build(what, int(m), int(k), int(n))
        torch.cuda.nvtx.range_push("warm")
        fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
        torch.cuda.nvtx.range_push(case)
        fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    print(f"profile_cases: ran {len(argv)} cases on {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main(sys.argv[1:])
