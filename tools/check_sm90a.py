"""Correctness check of the Hopper (sm_90a) GEMM path against int8q.reference.

On an H100/H200 with int8q built for 9.0a, torch.ops.int8q.scaled_mm routes every M to
gemm_sm90a. Shapes cover tile tails in M and N, K = 16 * odd (a partial last 128-wide K tile),
odd N (scalar stores), one row tile with many column tiles, and many tiles per CTA (persistent
loop and pipeline phase wrap-around).

Small M: below 128 rows the A box is only the rows that exist, and at M <= 64 one consumer
warpgroup works alone. When 128-wide tiles leave SMs idle, gemm_sm90a's pick_plan takes
64-wide tiles and/or splits K over thread-block clusters (partial sums added in distributed
shared memory). The "path" column shows the plan pick_plan should choose on this card, as
sm90a/<tile width>[sS] (a mirror of it that assumes an H100/H200's cluster capacity: 66
clusters of 2 and 30 of 4 at once; labels only, the checks do not depend on it). The split
shapes include a last split shorter than the others and ending in a K tail, odd N, and M
below one row tile.

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
    # Small M on 132 SMs (the path column shows this card's plan):
    (256, 4096, 4096),    # 64-wide tiles, 2 row tiles
    (96, 4096, 4096),     # 64-wide tiles, 96-row A box
    (64, 4096, 4096),     # 64-wide tiles, one consumer warpgroup
    (128, 14336, 4096),   # 64-wide tiles split in 2 (56 K tiles each)
    (17, 14336, 4096),    # the same at 17 rows (24-row A box)
    (128, 6224, 4096),    # K = 16 * 389: 49 K tiles as 25 + 24, the last one a K tail
    (100, 6160, 5121),    # 128-wide tiles split in 2, odd N, M tail
    (64, 12304, 448),     # 64-wide tiles split over clusters of 4 (25 x 3 + 22 K tiles)
    (40, 12304, 1984),    # 128-wide tiles split over clusters of 4
    (200, 4816, 1001),    # odd N, M tail, 64-wide tiles
    (300, 4096, 4096),    # 96-wide tiles: 3 row tiles x 43 column tiles
    (290, 1040, 4001),    # 96-wide tiles, odd N (the last column tile 65 wide), K tail
    (512, 14336, 4480),   # 256-wide tiles
]
QUICK = [(128, 128, 128), (200, 112, 136), (300, 256, 1001), (1000, 592, 1000), (64, 1040, 1000),
         (17, 6224, 1000), (100, 6160, 5121),
         (200, 4816, 1001)]

TOL = {  # |out - ref| <= atol + rtol * |ref|, rtol ~ 1-2 ulp of the output type
    torch.float32: 2e-6,
    torch.float16: 2e-3,
    torch.bfloat16: 8e-3,
}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def predicted_plan(m: int, n: int, k: int, sms: int) -> str:
    """Mirror of gemm_sm90a.cu's pick_block_n + pick_plan (labels only; keep in step)."""
    tiles_m, k_tiles = _cdiv(m, 128), _cdiv(k, 128)
    tiles128 = tiles_m * _cdiv(n, 128)
    if tiles128 >= sms:
        waves256 = _cdiv(tiles_m * _cdiv(n, 256), sms)
        waves128 = _cdiv(tiles128, sms)
        return "sm90a/128" if waves128 * 128 * 11 < waves256 * 256 * 10 else "sm90a/256"
    slots = {1: sms, 2: 2 * (sms // 2), 4: 120}  # H100/H200 cluster capacity
    best, best_ctas = "sm90a/128", tiles128
    for bn, s in [(64, 1), (96, 1), (128, 2), (64, 2), (128, 4), (64, 4)]:
        ctas = tiles_m * _cdiv(n, bn) * s
        per = _cdiv(k_tiles, s)
        if s > 1 and (per < 24 or (s - 1) * per >= k_tiles):
            continue
        if ctas > slots[s] or ctas <= best_ctas:
            continue
        best, best_ctas = f"sm90a/{bn}" + (f"s{s}" if s > 1 else ""), ctas
    return best


def expected_path(m: int, n: int = 0, k: int = 0) -> str:
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0) or k % 16 != 0:
        return "fallback"
    if n == 0:
        return "sm90a"
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return predicted_plan(m, n, k, sms)


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
    print(f"{'M':>6} {'K':>6} {'N':>6}  {'path':14} {'case':34} {'max_abs_err':>12} {'rel_to_max':>10}  ok")
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
            print(f"{m:6d} {k:6d} {n:6d}  {path:14} {name:34} {max_err:12.4e} {rel:10.2e}  {'ok' if ok else 'FAIL'}")
    return failures


def check_matmul_shift(gen) -> int:
    """Static scale + shift: exercises the w_sum (shift) term of the epilogue."""
    failures = 0
    # (128, 14336, 4096) and (100, 6160, 5121) split K over clusters: the owner of each row
    # slice applies the shift term and bias after adding the other splits' sums.
    for m, k, n in [(256, 592, 520), (1024, 4096, 4096), (128, 14336, 4096), (100, 6160, 5121),
                    (200, 4816, 1001)]:
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
