"""One int8q op call as data, shared by tools/fuzz_gpu.py and tools/sanitize_cases.py.

An ``OpCase`` names a call: op, mode, shapes, dtypes, memory layouts and the kind of data.
``build`` makes its inputs from the case's seed (same device, same seed: same tensors),
``run`` calls int8q, ``expected`` calls int8q.reference, and ``check`` compares the two under
the policy in the README's Reliability section (``TOLERANCE``): codes and scales bit-exact, float outputs
within a bound relative to each row's largest reference value.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

import int8q
from int8q import reference

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

OPS = ("matmul", "scaled_mm", "quantize_activation", "quantize_weight")
MODES = {
    "matmul": ("dynamic", "static", "shift"),
    "quantize_activation": ("dynamic", "static", "shift"),
    "scaled_mm": ("per_row", "per_tensor"),
    "quantize_weight": ("per_channel", "per_tensor"),
}
# Float data kinds (x of matmul / quantize_activation, weight of quantize_weight).
FLOAT_KINDS = ("normal", "outlier_channels", "zero_rows", "extreme", "constant_rows", "tiny",
               "row_scales", "ties", "nonfinite")
# int8 code kinds (xq of scaled_mm, qweight of matmul / scaled_mm).
CODE_KINDS = ("random", "full_range", "saturated", "zero_rows", "sparse")
# x / xq / weight layouts. row_padded, transposed and strided need a 2-D x;
# batch_transposed needs a 3-D x. Padding holds NaN (float) or 127 (int8): reading it shows.
LAYOUTS = ("contiguous", "row_padded", "transposed", "strided", "offset", "batch_transposed")

_EPS32 = torch.finfo(torch.float32).eps
_MIN_SUBNORMAL = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}

TOLERANCE = (
    "codes, scales: bit-exact (NaN matches NaN). Float outputs, per row m: "
    "|out - ref| <= 2*eps(out)*R_m + 8*eps(fp32)*(R_m + A) + 2*min_subnormal(out), where "
    "ref = int8q.reference in float32 before the cast to the output dtype, "
    "R_m = max_n |ref[m, n]| (clamped to the output dtype's max), "
    "A = max_n (|x_shift * w_scale[n] * w_sum[n]| + |bias[n]|); NaN must match NaN; "
    "values past the dtype's max compare as +-max*(1+eps)"
)


@dataclasses.dataclass
class OpCase:
    op: str
    mode: str
    m: int  # rows of x / xq (quantize_weight: 0)
    k: int
    n: int = 0  # output channels; rows of the weight for quantize_weight
    dtype: str = "fp16"  # x dtype (quantize_weight: weight dtype)
    out_dtype: Optional[str] = None  # scaled_mm only; None is the op's default, float32
    lead: Optional[Tuple[int, ...]] = None  # x.shape[:-1]; None means (m,)
    layout: str = "contiguous"  # of x, xq, or the float weight of quantize_weight
    w_layout: str = "contiguous"  # of qweight
    data: str = "normal"  # FLOAT_KINDS, or CODE_KINDS for scaled_mm's xq
    w_data: str = "random"  # CODE_KINDS of qweight
    per_channel: bool = True  # w_scale [N] or [1]
    bias: Optional[str] = None  # bias dtype
    param_layout: str = "contiguous"  # "strided": w_scale and bias are strided views
    scale_on_cpu: bool = False  # static x_scale / x_shift held on the CPU
    # x_smooth of matmul / quantize_activation: "none"; "random" (log-uniform in [1/64, 64]);
    # "offset" (the same, in a view 4 bytes past 16-byte alignment: the scalar-load path).
    smooth: str = "none"
    w_sum: bool = False  # matmul, shift mode: pass qweight's row sums instead of having them summed
    seed: int = 0

    @property
    def shape_lead(self) -> Tuple[int, ...]:
        return (self.m,) if self.lead is None else tuple(self.lead)

    def describe(self) -> str:
        x = list(self.shape_lead) + [self.k]
        parts = [f"{self.op}/{self.mode}"]
        if self.op == "quantize_weight":
            parts.append(f"weight=[{self.n}, {self.k}] {self.dtype} layout={self.layout} data={self.data}")
            return " ".join(parts)
        name = "xq" if self.op == "scaled_mm" else "x"
        dt = "int8" if self.op == "scaled_mm" else self.dtype
        parts.append(f"{name}={x} {dt} layout={self.layout} data={self.data}")
        if self.op != "quantize_activation":
            parts.append(f"N={self.n} w={'per_channel' if self.per_channel else 'per_tensor'},"
                         f"{self.w_data},{self.w_layout} bias={self.bias}")
            if self.param_layout != "contiguous":
                parts.append(f"params={self.param_layout}")
        if self.op == "scaled_mm":
            parts.append(f"out={self.out_dtype}")
        if self.mode in ("static", "shift"):
            parts.append(f"scale_on={'cpu' if self.scale_on_cpu else 'device'}")
        if self.smooth != "none":
            parts.append(f"smooth={self.smooth}")
        if self.w_sum:
            parts.append("w_sum=given")
        return " ".join(parts)

    def macs(self) -> int:
        return self.m * self.k * max(self.n, 1)

    def uses_generic_gemm(self) -> bool:
        """The any-shape fallback GEMM: K % 16 != 0 or an int8 operand off 16-byte alignment."""
        misaligned_xq = self.op == "scaled_mm" and self.layout == "offset"
        return self.k % 16 != 0 or self.w_layout == "offset" or misaligned_xq


# ---------------------------------------------------------------------------------------------
# Data


def _randn(shape, g, device):
    return torch.randn(shape, generator=g, device=device)


def _rand(shape, g, device):
    return torch.rand(shape, generator=g, device=device)


def float_rows(m: int, k: int, dtype: torch.dtype, kind: str, g, rng: random.Random, device) -> Tensor:
    """[m, k] contiguous values of one FLOAT_KINDS kind, cast to dtype."""
    x = _randn((m, k), g, device) * 10.0 ** rng.uniform(-2, 1)
    if m == 0:
        return x.to(dtype)
    if kind == "outlier_channels":  # SmoothQuant-style: a few channels x1000
        idx = torch.randperm(k, generator=g, device=device)[: rng.randint(1, max(1, k // 64))]
        x[:, idx] *= 1000.0
    elif kind == "zero_rows":
        x[_rand((m,), g, device) < rng.choice([0.1, 0.5, 1.0])] = 0.0
    elif kind == "extreme":  # magnitudes near fp16's max, 65504 (and far past it for fp32/bf16)
        mag = 3.0e4 + _rand((m, k), g, device) * (65504.0 - 3.0e4)
        ext = torch.where(_rand((m, k), g, device) < 0.5, -mag, mag)
        ext[:, 0] = 65504.0
        if dtype != torch.float16 and rng.random() < 0.3:
            ext = ext * 1e26
        where = rng.choice(["all", "channels", "rows"])
        if where == "all":
            x = ext
        elif where == "channels":
            idx = torch.randperm(k, generator=g, device=device)[: rng.randint(1, k)]
            x[:, idx] = ext[:, idx]
        else:
            rows = _rand((m,), g, device) < 0.3
            x[rows] = ext[rows]
    elif kind == "constant_rows":  # absmax / 127 must give codes of exactly +-127
        x = (_randn((m, 1), g, device) * 10.0 ** rng.uniform(-2, 2)).expand(m, k).clone()
    elif kind == "tiny":  # fp32/bf16: ~1e-30 (normal); fp16: ~1e-6 (fp16 subnormals)
        x = _randn((m, k), g, device) * (1e-6 if dtype == torch.float16 else 1e-30)
    elif kind == "row_scales":
        x = x * 10.0 ** (_rand((m, 1), g, device) * 6 - 3)
    elif kind == "ties":  # k + 0.5: exact rounding ties under a static scale of 1
        x = torch.randint(-127, 127, (m, k), generator=g, device=device).float() + 0.5
    elif kind == "nonfinite":
        r = rng.randint(1, min(m, 3))
        rows = torch.randperm(m, generator=g, device=device)[:r]
        cols = torch.randint(0, k, (r,), generator=g, device=device)
        vals = torch.tensor([math.nan, math.inf, -math.inf], device=device)
        x[rows, cols] = vals[torch.randint(0, 3, (r,), generator=g, device=device)]
    elif kind != "normal":
        raise ValueError(f"unknown float data kind {kind!r}")
    if dtype == torch.float16 and kind != "nonfinite":
        x = x.clamp(-65504.0, 65504.0)
    return x.to(dtype)


def code_rows(m: int, k: int, kind: str, g, device) -> Tensor:
    """[m, k] int8 codes of one CODE_KINDS kind."""
    def randint(lo, hi, shape):
        return torch.randint(lo, hi, shape, generator=g, device=device, dtype=torch.int8)

    if kind == "random":
        return randint(-127, 128, (m, k))
    if kind == "full_range":
        return randint(-128, 128, (m, k))
    if kind == "saturated":  # rows of all 127, -127 or -128: the accumulator's worst case
        vals = torch.tensor([127, -127, -128], dtype=torch.int8, device=device)
        return vals[torch.randint(0, 3, (m,), generator=g, device=device)][:, None].expand(m, k).contiguous()
    if kind == "zero_rows":
        q = randint(-127, 128, (m, k))
        q[_rand((m,), g, device) < 0.3] = 0
        return q
    if kind == "sparse":
        return randint(-128, 128, (m, k)) * (_rand((m, k), g, device) < 0.05).to(torch.int8)
    raise ValueError(f"unknown code kind {kind!r}")


def place(data: Tensor, lead: Tuple[int, ...], layout: str, rng: random.Random) -> Tensor:
    """Lay out the contiguous [M, K] values `data` as a [*lead, K] tensor of the given layout."""
    m, k = data.shape
    fill = 127 if data.dtype == torch.int8 else math.nan
    if layout == "contiguous":
        return data.reshape(*lead, k)
    if layout == "offset":  # contiguous, but the data pointer is one element past an allocation
        flat = torch.full((m * k + 1,), fill, dtype=data.dtype, device=data.device)
        flat[1:] = data.reshape(-1)
        return flat[1:].view(*lead, k)
    if layout == "batch_transposed":  # [B, T, K] viewed from a [T, B, K] buffer
        b, t = lead
        return data.reshape(b, t, k).transpose(0, 1).contiguous().transpose(0, 1)
    assert len(lead) == 1, f"layout {layout} needs a 2-D tensor"
    if layout == "row_padded":  # row stride K + pad, last dim contiguous
        pad = rng.randint(1, 17)
        base = torch.full((m, k + pad), fill, dtype=data.dtype, device=data.device)
        base[:, :k] = data
        return base[:, :k]
    if layout == "transposed":
        return data.t().contiguous().t()
    if layout == "strided":  # every other element
        base = torch.full((m, 2 * k), fill, dtype=data.dtype, device=data.device)
        base[:, ::2] = data
        return base[:, ::2]
    raise ValueError(f"unknown layout {layout!r}")


def _vector(values: Tensor, layout: str) -> Tensor:
    """A 1-D parameter (w_scale, bias), as a strided view when layout == 'strided'."""
    if layout != "strided":
        return values
    base = torch.full((2 * values.numel(),), math.nan, dtype=values.dtype, device=values.device)
    base[::2] = values
    return base[::2]


def _static_values(case: OpCase, data: Tensor, rng: random.Random) -> Tuple[float, Optional[float]]:
    """A valid static scale (and shift) for data, sometimes saturating on purpose."""
    shifted = case.mode == "shift"
    if case.data == "ties":
        return 1.0, float(rng.randint(-3, 3)) if shifted else None
    xf = data.float()
    finite = xf[torch.isfinite(xf)]
    amax = finite.abs().max().item() if finite.numel() else 0.0
    lo = finite.min().item() if finite.numel() else 0.0
    hi = finite.max().item() if finite.numel() else 0.0
    factor = 2.0 ** rng.uniform(-2, 2)
    shift = None
    if not shifted:
        scale = amax / 127 * factor if rng.random() > 0.1 else 2.0 ** rng.randint(-8, 8)
    else:
        scale = (hi - lo) / 255 * factor
        shift = (hi + lo) / 2 + rng.uniform(-0.1, 0.1) * (hi - lo)
        if rng.random() < 0.15:
            shift = lo + 140 * scale  # the low end of the range lands on -128
    s32 = torch.tensor(scale, dtype=torch.float32).item()
    if not (s32 > 0 and math.isfinite(s32)):
        scale = 1.0
    return scale, shift


def build(case: OpCase, device) -> Dict[str, object]:
    """The op's arguments, made from case.seed on device."""
    device = torch.device(device)
    g = torch.Generator(device=device)
    g.manual_seed(case.seed)
    rng = random.Random(case.seed)
    lead = case.shape_lead
    dtype = DTYPES[case.dtype]
    if case.op == "quantize_weight":
        w = float_rows(case.n, case.k, dtype, case.data, g, rng, device)
        return {"weight": place(w, (case.n,), case.layout, rng), "per_channel": case.mode == "per_channel"}

    args: Dict[str, object] = {}
    if case.op == "scaled_mm":
        xq = code_rows(case.m, case.k, case.data, g, device)
        args["xq"] = place(xq, lead, case.layout, rng)
        if case.mode == "per_row":
            xs = 10.0 ** (_rand((case.m,), g, device) * 4 - 4)
            args["x_scale"] = xs.reshape(lead) if rng.random() < 0.5 else xs
        else:
            args["x_scale"] = 10.0 ** (_rand((1,), g, device) * 4 - 4)
        args["out_dtype"] = DTYPES[case.out_dtype] if case.out_dtype else None
    else:
        x = float_rows(case.m, case.k, dtype, case.data, g, rng, device)
        args["x"] = place(x, lead, case.layout, rng)
        quantized = x
        if case.smooth != "none":
            smooth = 2.0 ** (_rand((case.k + 1,), g, device) * 12 - 6)
            args["x_smooth"] = smooth[1:] if case.smooth == "offset" else smooth[: case.k]
            quantized = x.float() * args["x_smooth"]
        if case.mode in ("static", "shift"):
            scale, shift = _static_values(case, quantized, rng)
            where = torch.device("cpu") if case.scale_on_cpu else device
            shape = (1,) if rng.random() < 0.7 else ()
            args["x_scale"] = torch.full(shape, scale, dtype=torch.float32, device=where)
            if shift is not None:
                args["x_shift"] = torch.full(shape, shift, dtype=torch.float32, device=where)
        if case.op == "quantize_activation":
            return args

    qw = code_rows(case.n, case.k, case.w_data, g, device)
    args["qweight"] = place(qw, (case.n,), case.w_layout, rng)
    if case.w_sum:
        args["w_sum"] = qw.sum(1, dtype=torch.int32)
    if case.per_channel:
        ws = torch.ones(case.n, device=device) if rng.random() < 0.1 else 10.0 ** (_rand((case.n,), g, device) * 3 - 4)
    else:
        ws = 10.0 ** (_rand((1,), g, device) * 3 - 4)
    args["w_scale"] = _vector(ws, case.param_layout)
    if case.bias is not None:
        b = (_randn((case.n,), g, device) * 10.0 ** rng.uniform(-2, 1)).to(DTYPES[case.bias])
        args["bias"] = _vector(b, case.param_layout)
    return args


def to_device(args: Dict[str, object], device) -> Dict[str, object]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in args.items()}


# ---------------------------------------------------------------------------------------------
# Calls


def run(case: OpCase, args: Dict[str, object]):
    a = args
    if case.op == "matmul":
        return int8q.ops.matmul(a["x"], a["qweight"], a["w_scale"], a.get("x_scale"), a.get("x_shift"), a.get("bias"),
                                a.get("x_smooth"), a.get("w_sum"))
    if case.op == "scaled_mm":
        return int8q.ops.scaled_mm(a["xq"], a["qweight"], a["x_scale"], a["w_scale"], a.get("bias"), a["out_dtype"])
    if case.op == "quantize_activation":
        return int8q.ops.quantize_activation(a["x"], a.get("x_scale"), a.get("x_shift"), a.get("x_smooth"))
    return int8q.ops.quantize_weight(a["weight"], a["per_channel"])


def expected(case: OpCase, args: Dict[str, object]):
    """The reference result; float GEMM outputs stay float32 (before the output cast)."""
    a = args
    if case.op == "matmul":
        return reference.matmul(a["x"].float(), a["qweight"], a["w_scale"], a.get("x_scale"), a.get("x_shift"),
                                a.get("bias"), a.get("x_smooth"), a.get("w_sum"))
    if case.op == "scaled_mm":
        return reference.scaled_mm(a["xq"], a["qweight"], a["x_scale"], a["w_scale"], a.get("bias"), torch.float32)
    if case.op == "quantize_activation":
        return reference.quantize_activation(a["x"], a.get("x_scale"), a.get("x_shift"), a.get("x_smooth"))
    return reference.quantize_weight(a["weight"], a["per_channel"])


def out_dtype_of(case: OpCase) -> torch.dtype:
    if case.op == "scaled_mm":
        return DTYPES[case.out_dtype] if case.out_dtype else torch.float32
    return DTYPES[case.dtype]


# ---------------------------------------------------------------------------------------------
# Comparison


@dataclasses.dataclass
class Verdict:
    ok: bool
    exact: bool  # bit-identical to the reference (after the output cast)
    detail: str = ""


def _same_bits(got: Tensor, ref: Tensor) -> bool:
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return False
    if got.is_floating_point():
        nan_g, nan_r = torch.isnan(got), torch.isnan(ref)
        return bool(torch.equal(nan_g, nan_r) and torch.equal(got[~nan_g], ref[~nan_r]))
    return bool(torch.equal(got, ref))


def _first_diff(got: Tensor, ref: Tensor) -> str:
    g, r = got.reshape(-1), ref.reshape(-1)
    if got.is_floating_point():
        bad = ~((g == r) | (torch.isnan(g) & torch.isnan(r)))
    else:
        bad = g != r
    idx = torch.nonzero(bad)
    if idx.numel() == 0:
        return "values equal"
    i = idx[0].item()
    pos = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), tuple(got.shape)))
    return f"{idx.numel()} differ, first at {pos}: got {g[i].item()!r} expected {r[i].item()!r}"


def _check_exact(names, got, ref) -> Verdict:
    for name, gt, rt in zip(names, got, ref):
        if gt.shape != rt.shape or gt.dtype != rt.dtype:
            return Verdict(False, False, f"{name}: got {tuple(gt.shape)} {gt.dtype}, expected {tuple(rt.shape)} {rt.dtype}")
        if not _same_bits(gt, rt.to(gt.device)):
            return Verdict(False, False, f"{name}: {_first_diff(gt, rt.to(gt.device))}")
    return Verdict(True, True)


def additive_magnitude(case: OpCase, args: Dict[str, object]) -> float:
    """A = max_n (|shift * w_scale[n] * w_sum[n]| + |bias[n]|), the size of the terms added to acc * scales."""
    if case.n == 0:
        return 0.0
    qw = args["qweight"]
    a = torch.zeros(case.n, dtype=torch.float64, device=qw.device)
    if args.get("x_shift") is not None:
        w_sum = qw.to(torch.int64).sum(dim=1).double()
        shift = args["x_shift"].double().reshape(()).item()
        a += (shift * args["w_scale"].double().to(qw.device) * w_sum).abs()
    if args.get("bias") is not None:
        a += args["bias"].double().to(qw.device).abs()
    return a.max().item()


def output_tolerance(ref32: Tensor, out_dtype: torch.dtype, additive: float) -> Tensor:
    """Per-row bound [M, 1] (float64) on |out - ref32|: see TOLERANCE."""
    big = torch.finfo(out_dtype).max
    r = torch.nan_to_num(ref32.double().abs(), nan=0.0).clamp(max=big)
    r = r.amax(dim=1, keepdim=True) if r.shape[1] else torch.zeros(r.shape[0], 1, dtype=r.dtype, device=r.device)
    eps = torch.finfo(out_dtype).eps
    return 2 * eps * r + 8 * _EPS32 * (r + additive) + 2 * _MIN_SUBNORMAL[out_dtype]


def compare_output(got: Tensor, ref32: Tensor, out_dtype: torch.dtype, additive: float) -> Verdict:
    if got.dtype != out_dtype or got.shape != ref32.shape:
        return Verdict(False, False, f"got {tuple(got.shape)} {got.dtype}, expected {tuple(ref32.shape)} {out_dtype}")
    ref32 = ref32.to(got.device)
    if got.numel() == 0:
        return Verdict(True, True)
    n = got.shape[-1]
    g = got.reshape(-1, n).double()
    e = ref32.reshape(-1, n).double()
    tol = output_tolerance(e, out_dtype, additive)
    top = torch.finfo(out_dtype).max * (1 + torch.finfo(out_dtype).eps)
    nan_g, nan_e = torch.isnan(g), torch.isnan(e)
    diff = (g.clamp(-top, top) - e.clamp(-top, top)).abs()
    diff = torch.where(nan_g | nan_e, torch.zeros_like(diff), diff)
    bad = (nan_g != nan_e) | (diff > tol)
    exact = _same_bits(got, ref32.to(out_dtype))
    if not bool(bad.any()):
        return Verdict(True, exact)
    count = int(bad.sum())
    excess = torch.where(bad, diff - tol, torch.full_like(diff, -math.inf))
    excess = torch.where(nan_g != nan_e, torch.full_like(diff, math.inf), excess)
    i = int(torch.argmax(excess.reshape(-1)))
    row, col = divmod(i, n)
    return Verdict(False, False,
                   f"{count} of {g.numel()} outside tolerance; worst at row {row} col {col}: "
                   f"got {g[row, col].item()!r} expected {e[row, col].item()!r} "
                   f"|diff| {diff[row, col].item():.4g} tol {tol[row, 0].item():.4g}")


def check(case: OpCase, args: Dict[str, object], got, ref) -> Verdict:
    """Compare int8q's result `got` with `ref` = expected(case, args)."""
    if case.op == "quantize_activation":
        return _check_exact(("codes", "x_scale"), got, ref)
    if case.op == "quantize_weight":
        return _check_exact(("qweight", "w_scale"), got, ref)
    return compare_output(got, ref, out_dtype_of(case), additive_magnitude(case, args))


def sample_case(rng: random.Random, seed: int, max_macs: int, max_macs_generic: int,
                max_elements: int) -> OpCase:
    """One random case for the fuzzer: small M favoured, LLM and tail shapes, adversarial data."""
    op = rng.choices(OPS, weights=(45, 25, 18, 12))[0]
    mode = rng.choice(MODES[op])

    r = rng.random()
    if r < 0.03:
        m = 0
    elif r < 0.18:
        m = 1
    elif r < 0.45:
        m = rng.randint(2, 16)
    elif r < 0.65:
        m = rng.randint(17, 64)
    elif r < 0.82:
        m = rng.randint(65, 512)
    else:
        m = rng.choice([rng.randint(513, 4096), 1024, 2048, 4096])

    def dim(llm, align, weights):
        kind = rng.choices(("llm", "aligned", "any", "small"), weights=weights)[0]
        if kind == "llm":
            return rng.choice(llm)
        if kind == "aligned":
            return align * rng.randint(1, 8192 // align)
        if kind == "any":
            return min(8192, int(10 ** rng.uniform(0, math.log10(8192))))
        return rng.randint(1, 64)

    # About a third of the K values are not multiples of 16 (the generic path).
    k = dim((768, 1024, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 8192), 16, (40, 30, 20, 10))
    if rng.random() < 0.1 and k % 16 == 0:
        k = max(1, k - rng.randint(1, 15))
    n = dim((768, 1024, 1536, 2048, 3072, 4096, 5120, 6144, 8192), 8, (30, 20, 35, 15))
    dtype = rng.choices(("fp16", "bf16", "fp32"), weights=(45, 45, 10))[0]

    adversarial = rng.random() < 0.35
    if op == "scaled_mm":
        data = rng.choice(CODE_KINDS[1:]) if adversarial else "random"
    elif op == "quantize_weight":
        data = rng.choice(("outlier_channels", "zero_rows", "extreme", "constant_rows", "tiny", "row_scales")) \
            if adversarial else "normal"
    else:
        data = rng.choice(FLOAT_KINDS[1:]) if adversarial else "normal"

    case = OpCase(op=op, mode=mode, m=m, k=k, n=n, dtype=dtype, data=data, seed=seed)
    if op == "quantize_weight":
        case.m = 0
        case.n = max(1, min(n, max_elements // k))
        case.layout = rng.choices(("contiguous", "transposed", "row_padded", "offset"), weights=(80, 8, 6, 6))[0]
        return case

    # Bound the work: M first, then N.
    if op == "quantize_activation":
        case.n = 0
        case.m = min(m, max_elements // k)
    else:
        case.w_data = rng.choices(CODE_KINDS, weights=(60, 15, 10, 10, 5))[0]
        case.w_layout = rng.choices(("contiguous", "transposed", "offset"), weights=(88, 6, 6))[0]
        case.per_channel = rng.random() < 0.75
        case.bias = None if rng.random() < 0.5 else (dtype if rng.random() < 0.6 else rng.choice(tuple(DTYPES)))
        case.param_layout = "strided" if rng.random() < 0.05 else "contiguous"
        budget = max_macs_generic if case.uses_generic_gemm() else max_macs
        if case.m * k * n > budget:
            case.m = max(1, budget // (k * n)) if m else 0
        if case.m * k * n > budget:
            case.n = max(1, budget // max(case.m * k, 1))
    if op == "scaled_mm":
        case.out_dtype = rng.choice((None, "fp32", "fp16", "bf16"))
    if mode in ("static", "shift"):
        case.scale_on_cpu = rng.random() < 0.5

    m = case.m
    r = rng.random()
    if m == 1 and r < 0.15:
        case.lead = ()
    elif m >= 2 and r < 0.2:
        b = rng.choice([d for d in range(1, min(m, 64) + 1) if m % d == 0])
        case.lead = (b, m // b)
    elif m == 0 and r < 0.3:
        case.lead = (rng.randint(1, 3), 0)
    if m > 0 and rng.random() < 0.2:
        if case.lead is None:
            case.layout = rng.choice(("row_padded", "transposed", "strided", "offset"))
        elif len(case.lead) == 2:
            case.layout = "batch_transposed"
        else:
            case.layout = "offset"
    # Re-check the budget: an xq laid out at an offset takes the generic path.
    if op == "scaled_mm" and case.uses_generic_gemm() and case.macs() > max_macs_generic:
        case.layout = "contiguous"
    if op in ("matmul", "quantize_activation") and rng.random() < 0.2:
        case.smooth = rng.choice(("random", "random", "offset"))
    if op == "matmul" and mode == "shift" and rng.random() < 0.5:
        case.w_sum = True
    return case
