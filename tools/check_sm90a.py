"""Correctness check of the Hopper (sm_90a) GEMM path against int8q.reference.

On an H100/H200 with int8q built for 9.0a, torch.ops.int8q.scaled_mm routes M >= 33 to
gemm_sm90a (smaller M falls back to the sm80 path, checked here as well). Shapes cover tile
tails in M and N, K = 16 * odd (a partial last 128-wide K tile), odd N (scalar stores), one
row tile with many column tiles (128-wide tiles), and many tiles per CTA (persistent loop and
pipeline phase wrap-around).

Split-K: when the tiles leave SMs idle (small M), gemm_sm90a splits K, writes int32 partials
and reduces them with splitk_reduce. The "path" column shows sm90a/sS with the split count S
that gemm_sm90a's pick_splits should choose on this card (a mirror of its cost model, for
labelling only: the checks themselves do not depend on it). The split shapes include a last
split shorter than the others and ending in a K tail, odd N (scalar partial stores), M below
one row tile, 256-wide tiles, and more units than SMs (several units of different K-tile
counts per CTA). The exact-int32 case checks the summed partials; the scaled cases check the
epilogue as splitk_reduce applies it.

    python tools/check_sm90a.py            # all shapes
    python tools/check_sm90a.py --quick    # a few small shapes (e.g. under compute-sanitizer)
    python tools/check_sm90a.py --bench    # also time a few large shapes against fp16 / _int_mm

Exits non-zero when any case is outside tolerance.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import int8q
from int8q import reference

# (M, K, N)
SHAPES = [
    (128, 128, 128),      # one tile, one K tile
    (129, 256, 256),      # one row past a tile
    (200, 112, 136),      # K < 128 (16 * 7), M and N tails
    (1000, 592, 1000),    # K = 16 * 37: 4 full K tiles + 80
    (300, 256, 1001),     # odd N: scalar stores
    (128, 4096, 4096),    # one row tile: 128-wide column tiles
    (512, 1024, 1536),
    (2048, 4096, 4096),   # several tiles per CTA, pipeline wraps many times
    (4096, 1040, 768),    # K = 16 * 65; tiles_m > 16 (two tile groups)
    (2048, 14336, 4096),  # long K
    (64, 512, 384),       # M = 64: one half-empty row tile, 4 K tiles (too few to split)
    (100, 592, 1000),     # M < 128 with M, N and K tails, no split
    (48, 512, 384),       # M = 48: a partly empty row tile
    # Split-K (split counts for 132 SMs; the path column shows this card's):
    (256, 4096, 4096),    # 2 splits of 16 K tiles
    (96, 4096, 4096),     # M < 128: 4 splits
    (64, 4096, 4096),     # 4 splits
    (128, 14336, 4096),   # 4 splits of 28 K tiles
    (256, 14336, 4096),   # 2 splits of 56
    (128, 4176, 4096),    # K = 16 * 261: 33 K tiles as 9 + 9 + 9 + 6, the last one a K tail
    (200, 4816, 1001),    # K = 16 * 301 (38 K tiles: 8 splits, last 3), odd N, M tail
    (64, 1040, 1000),     # K = 16 * 65 (9 K tiles: 5 + 4), N tail
    (192, 14336, 4480),   # 5 splits of 23 (last 20): 350 units on 132 CTAs, 2-3 units each
    (512, 14336, 4480),   # 256-wide tiles, 3 splits of 38 (last 36)
]
QUICK = [(128, 128, 128), (200, 112, 136), (300, 256, 1001), (1000, 592, 1000), (64, 1040, 1000),
         (200, 4816, 1001)]

TOL = {  # |out - ref| <= atol + rtol * |ref|, rtol ~ 1-2 ulp of the output type
    torch.float32: 2e-6,
    torch.float16: 2e-3,
    torch.bfloat16: 8e-3,
}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def predicted_splits(m: int, n: int, k: int, sms: int) -> int:
    """Mirror of gemm_sm90a.cu's pick_block_n + pick_splits (labels only; keep in step)."""
    tiles_m, k_tiles = _cdiv(m, 128), _cdiv(k, 128)
    waves256 = _cdiv(tiles_m * _cdiv(n, 256), sms)
    waves128 = _cdiv(tiles_m * _cdiv(n, 128), sms)
    bn = 128 if waves128 * 128 * 11 < waves256 * 256 * 10 else 256
    tiles = tiles_m * _cdiv(n, bn)
    if tiles >= sms:
        return 1
    step_bytes = sms * (128 * 128 + bn * 128)
    best, best_cost = 1, 0.9 * (k_tiles + 2.0)
    for s in range(2, 17):
        per = _cdiv(k_tiles, s)
        if per < 4:
            break
        splits = _cdiv(k_tiles, per)
        cost = _cdiv(tiles * splits, sms) * (per + 2.0) + 2.0 + 8.0 * splits * m * n / step_bytes
        if cost < best_cost:
            best, best_cost = splits, cost
    return best


def expected_path(m: int, n: int = 0, k: int = 0) -> str:
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0) or m < 33 or k % 16 != 0:  # gemm_sm90a.cu kMinRows
        return "fallback"
    if n == 0:
        return "sm90a"
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    splits = predicted_splits(m, n, k, sms)
    return "sm90a" if splits == 1 else f"sm90a/s{splits}"


def make_inputs(m, k, n, gen, per_channel=True, per_token=True):
    xq = torch.randint(-127, 128, (m, k), generator=gen, dtype=torch.int8, device="cpu").cuda()
    wq = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8, device="cpu").cuda()
    xs = (torch.rand(m if per_token else 1, generator=gen) * 0.02 + 1e-3).cuda()
    ws = (torch.rand(n if per_channel else 1, generator=gen) * 0.02 + 1e-3).cuda()
    return xq, wq, xs, ws


def compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, exact: bool = False):
    o, r = out.double(), ref.double()
    if not torch.isfinite(o).all():
        return False, float("inf"), float("inf")
    err = (o - r).abs()
    scale = r.abs().max().item() or 1.0
    max_err = err.max().item()
    rel = max_err / scale
    if exact:
        return max_err == 0.0, max_err, rel
    rtol = TOL[dtype]
    ok = bool((err <= 1e-6 * scale + rtol * r.abs()).all())
    return ok, max_err, rel


def check_scaled_mm(shapes, gen) -> int:
    failures = 0
    print(f"{'M':>6} {'K':>6} {'N':>6}  {'path':8} {'case':34} {'max_abs_err':>12} {'rel_to_max':>10}  ok")
    for m, k, n in shapes:
        path = expected_path(m, n, k)
        xq, wq, xs, ws = make_inputs(m, k, n, gen)
        cases = []
        # The integer core: unit scales, fp32 out must equal the rounded int32 sum exactly.
        ones_x = torch.ones(m, device="cuda")
        ones_w = torch.ones(n, device="cuda")
        cases.append(("exact int32 (unit scales, f32)", (xq, wq, ones_x, ones_w, None, torch.float32), True))
        bias_f = torch.randn(n, generator=gen).cuda()
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            name = str(dtype).replace("torch.", "")
            cases.append((f"per-token/channel {name}", (xq, wq, xs, ws, None, dtype), False))
            cases.append((f"+bias f32 {name}", (xq, wq, xs, ws, bias_f, dtype), False))
        cases.append(("per-tensor scales f16 +bias f16",
                      (xq, wq, xs[:1].clone(), ws[:1].clone(), bias_f.half(), torch.float16), False))
        cases.append(("per-tensor w, bf16 bias, bf16",
                      (xq, wq, xs, ws[:1].clone(), bias_f.bfloat16(), torch.bfloat16), False))
        for name, args, exact in cases:
            out = torch.ops.int8q.scaled_mm(*args)
            ref = reference.scaled_mm(*args)
            ok, max_err, rel = compare(out, ref, args[-1], exact)
            failures += not ok
            print(f"{m:6d} {k:6d} {n:6d}  {path:8} {name:34} {max_err:12.4e} {rel:10.2e}  {'ok' if ok else 'FAIL'}")
    return failures


def check_matmul_shift(gen) -> int:
    """Static scale + shift: exercises the w_sum (shift) term of the epilogue."""
    failures = 0
    # (128, 4096, 4096) and (200, 4816, 1001) take the split-K path: the shift term and bias
    # are applied by splitk_reduce there.
    for m, k, n in [(256, 592, 520), (1024, 4096, 4096), (128, 4096, 4096), (200, 4816, 1001)]:
        x = (torch.randn(m, k, generator=gen) + 0.3).cuda().half()
        w = torch.randn(n, k, generator=gen).cuda()
        wq, ws = int8q.quantize_weight(w)
        scale = torch.tensor([x.float().abs().max().item() / 127.0], device="cuda")
        shift = torch.tensor([0.3], device="cuda")
        bias = torch.randn(n, generator=gen).cuda().half()
        out = int8q.matmul(x, wq, ws, scale, shift, bias)
        ref = reference.matmul(x, wq, ws, scale, shift, bias)
        ok, max_err, rel = compare(out, ref, torch.float16)
        failures += not ok
        print(f"matmul static+shift {m}x{k}x{n} ({expected_path(m, n, k)}): max_abs_err {max_err:.4e} "
              f"rel {rel:.2e}  {'ok' if ok else 'FAIL'}")
    return failures


def bench(fn, iters=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times)


def run_bench(gen):
    print("\nraw scaled_mm (bf16 out) vs F.linear fp16 and torch._int_mm, median seconds:")
    for m, k, n in [(2048, 4096, 14336), (8192, 4096, 4096), (8192, 14336, 4096), (8192, 8192, 28672)]:
        xq, wq, xs, ws = make_inputs(m, k, n, gen)
        x16 = torch.randn(m, k, device="cuda", dtype=torch.float16)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
        wt = wq.t()
        ops = 2.0 * m * n * k
        t_q = bench(lambda: torch.ops.int8q.scaled_mm(xq, wq, xs, ws, None, torch.bfloat16))
        t_h = bench(lambda: torch.nn.functional.linear(x16, w16))
        t_i = bench(lambda: torch._int_mm(xq, wt))
        print(f"  {m}x{k}x{n}: int8q {t_q * 1e6:8.1f} us ({ops / t_q / 1e12:6.0f} TOP/s)  "
              f"fp16 {t_h * 1e6:8.1f} us ({ops / t_h / 1e12:5.0f})  _int_mm {t_i * 1e6:8.1f} us "
              f"({ops / t_i / 1e12:5.0f})  speedup vs fp16 {t_h / t_q:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few small shapes only")
    parser.add_argument("--bench", action="store_true", help="also time large shapes")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    name = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    print(f"device: {name} (sm_{cap[0]}{cap[1]}), int8q CUDA kernels: {int8q.has_cuda_kernels()}")
    if cap != (9, 0):
        print("note: not a compute capability 9.0 device; the sm90a path is not exercised")
    gen = torch.Generator().manual_seed(0)
    failures = check_scaled_mm(QUICK if args.quick else SHAPES, gen)
    if not args.quick:
        failures += check_matmul_shift(gen)
    torch.cuda.synchronize()
    if args.bench:
        run_bench(gen)
    print(f"\n{'FAILED: ' + str(failures) + ' case(s)' if failures else 'all cases ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
