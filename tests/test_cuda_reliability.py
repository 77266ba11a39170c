"""CUDA reliability: streams, devices, memory, and exact int32 accumulation at the K limit.

Every test needs a CUDA GPU and a CUDA build of int8q, and skips cleanly otherwise; the
two-device tests also need a second GPU. Run with -rP to see the measured peak memory
(or set INT8Q_REPORT_DIR to get it in reliability_tests.jsonl there).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Dict

import pytest
import torch

import int8q
from int8q import reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and int8q.has_cuda_kernels()),
        reason="needs a CUDA GPU and int8q built with its CUDA kernels",
    ),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


@dataclasses.dataclass
class Call:
    """One int8q op call with its arguments, movable to another device."""

    name: str
    op: Callable
    args: Dict[str, object]

    def __call__(self):
        return self.op(**self.args)

    def to(self, device) -> "Call":
        # Static scales held on the CPU stay there: that is a supported placement.
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) and v.is_cuda else v for k, v in self.args.items()}
        return Call(self.name, self.op, moved)


def _calls(device, seed: int, small: bool = False):
    """Every op and mode, on the fused small-M path, the tensor-core GEMM (with and without
    split-K) and the generic path; `small` shrinks the shapes for the memory loop."""
    device = torch.device(device)
    g = torch.Generator(device=device)
    g.manual_seed(seed)

    def randn(*shape, dtype=torch.float16):
        return torch.randn(shape, generator=g, device=device).to(dtype)

    def codes(*shape):
        return torch.randint(-128, 128, shape, generator=g, device=device, dtype=torch.int8)

    def w_scale(n):
        return torch.rand(n, generator=g, device=device) * 0.01 + 1e-3

    def scale(value, cpu=False):
        return torch.tensor([value], dtype=torch.float32, device="cpu" if cpu else device)

    def mm(name, m, k, n, dtype, mode="dynamic", per_channel=True, bias=False, cpu_scale=False):
        args = {"x": randn(m, k, dtype=dtype), "qweight": codes(n, k), "w_scale": w_scale(n if per_channel else 1)}
        if mode != "dynamic":
            args["x_scale"] = scale(0.03, cpu_scale)
        if mode == "shift":
            args["x_shift"] = scale(0.25, cpu_scale)
        if bias:
            args["bias"] = randn(n, dtype=dtype)
        return Call(name, int8q.matmul, args)

    def smm(name, m, k, n, out_dtype, per_row=True):
        args = {"xq": codes(m, k), "qweight": codes(n, k), "x_scale": w_scale(m if per_row else 1),
                "w_scale": w_scale(n), "out_dtype": out_dtype}
        return Call(name, int8q.scaled_mm, args)

    def qa(name, m, k, dtype, mode="dynamic"):
        args = {"x": randn(m, k, dtype=dtype)}
        if mode != "dynamic":
            args["scale"] = scale(0.02)
        if mode == "shift":
            args["shift"] = scale(-0.1)
        return Call(name, int8q.quantize_activation, args)

    def qw(name, n, k, dtype, per_channel=True):
        return Call(name, int8q.quantize_weight, {"weight": randn(n, k, dtype=dtype), "per_channel": per_channel})

    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    if small:
        return [
            mm("gemv", 1, 256, 64, f16, bias=True),
            mm("m17_static", 17, 256, 64, bf16, "static"),
            mm("m100_shift", 100, 512, 40, f16, "shift", cpu_scale=True),
            mm("generic", 5, 100, 33, f32),
            smm("scaled_splitk", 2, 2048, 64, f16),
            smm("scaled_tensor", 64, 256, 72, None, per_row=False),
            qa("qa_shift", 8, 256, bf16, "shift"),
            qw("qw", 64, 256, f16, per_channel=False),
        ]
    return [
        mm("gemv", 1, 4096, 4096, f16, bias=True),
        mm("m17", 17, 2048, 1000, bf16),
        mm("m300_static", 300, 1024, 384, f16, "static", per_channel=False),
        mm("m64_shift", 64, 4096, 256, bf16, "shift", cpu_scale=True),
        mm("generic", 33, 1000, 77, f32),
        mm("m1024", 1024, 1024, 1024, f16, bias=True),
        smm("scaled_splitk", 2, 4096, 512, f16),
        smm("scaled_tensor", 512, 512, 640, None, per_row=False),
        qa("qa_dynamic", 256, 4096, f16),
        qa("qa_shift", 8, 333, bf16, "shift"),
        qw("qw", 512, 1024, f16),
    ]


def _tensors(result):
    return list(result) if isinstance(result, tuple) else [result]


def _assert_identical(got, expected, what):
    for g, e in zip(_tensors(got), _tensors(expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, what
        torch.testing.assert_close(g.cpu(), e.cpu(), rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _poisoned_like(t):
    return torch.full_like(t, 127 if t.dtype == torch.int8 else math.nan)


# ---------------------------------------------------------------------------------------------
# Streams


def test_concurrent_streams_match_serial():
    """4 streams, each with its own inputs, calls interleaved across streams, 3 rounds:
    bit-identical to the same calls run one after another on one stream."""
    calls = [_calls("cuda", seed=100 + i) for i in range(4)]
    serial = [[c() for c in per_stream] for per_stream in calls]
    torch.cuda.synchronize()

    main = torch.cuda.current_stream()
    streams = [torch.cuda.Stream() for _ in calls]
    for s in streams:
        s.wait_stream(main)  # the inputs were made on the main stream
    results = [[] for _ in calls]
    for _ in range(3):
        for j in range(len(calls[0])):
            for i, s in enumerate(streams):
                with torch.cuda.stream(s):
                    results[i].append((j, calls[i][j]()))
    for s in streams:
        main.wait_stream(s)
    torch.cuda.synchronize()
    for i, per_stream in enumerate(results):
        for j, got in per_stream:
            _assert_identical(got, serial[i][j], f"stream {i}, {calls[i][j].name}")


def test_ops_run_on_the_current_stream():
    """Inputs written on a side stream after a long sleep: an op launched anywhere but the
    current stream would read them before they are written (they start as NaN / 127)."""
    for call in _calls("cuda", seed=7):
        expected = call()
        inputs = {k: v for k, v in call.args.items() if isinstance(v, torch.Tensor) and v.is_cuda}
        late = {k: _poisoned_like(v) for k, v in inputs.items()}
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            torch.cuda._sleep(50_000_000)  # ~25 ms at 2 GHz
            for k, v in inputs.items():
                late[k].copy_(v)
            got = call.op(**{**call.args, **late})
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        _assert_identical(got, expected, call.name)


# ---------------------------------------------------------------------------------------------
# Devices


@two_gpus
@pytest.mark.parametrize("current,data", [(0, 1), (1, 0)])
def test_inputs_on_another_device_than_the_current_one(current, data):
    """Current device `current`, tensors on cuda:`data`: the result lands on cuda:`data`,
    nothing is allocated on the current device, the current device is unchanged, and the
    result is bit-identical to the same call made on cuda:`current`."""
    if torch.cuda.get_device_capability(0) != torch.cuda.get_device_capability(1):
        pytest.skip("the two GPUs differ; kernels and results may legitimately differ")
    for call in _calls(f"cuda:{data}", seed=3):
        with torch.cuda.device(current):
            before = torch.cuda.memory_allocated(current)
            got = call()
            torch.cuda.synchronize(data)
            assert torch.cuda.current_device() == current, call.name
            assert torch.cuda.memory_allocated(current) == before, f"{call.name} allocated on cuda:{current}"
            for t in _tensors(got):
                assert t.device == torch.device(f"cuda:{data}"), call.name
        expected = call.to(f"cuda:{current}")()
        _assert_identical(got, expected, call.name)


@two_gpus
def test_tensors_on_two_devices_are_rejected():
    x = torch.randn(4, 64, device="cuda:1", dtype=torch.float16)
    qw0 = torch.zeros(32, 64, dtype=torch.int8, device="cuda:0")
    ws0 = torch.ones(32, device="cuda:0")
    with pytest.raises(RuntimeError, match="one device"):
        int8q.matmul(x, qw0, ws0)
    qw1, ws1 = qw0.to("cuda:1"), ws0.to("cuda:1")
    with pytest.raises(RuntimeError, match="one device"):
        int8q.scaled_mm(qw1[:4], qw1, torch.ones(4, device="cuda:1"), ws0)
    with pytest.raises(RuntimeError, match="x's device or on the CPU"):
        int8q.matmul(x, qw1, ws1, torch.tensor([0.1], device="cuda:0"))
    out = int8q.matmul(x, qw1, ws1, torch.tensor([0.1]))  # a CPU static scale is fine
    assert out.device == torch.device("cuda:1")


# ---------------------------------------------------------------------------------------------
# Memory


def _report(name: str, record: dict) -> None:
    print(f"int8q {name}: " + ", ".join(f"{k}={v}" for k, v in record.items()))
    folder = os.environ.get("INT8Q_REPORT_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "reliability_tests.jsonl"), "a") as fh:
            fh.write(json.dumps({"test": name, **record}) + "\n")


def _outside_allocator() -> int:
    """Device memory in use that PyTorch's caching allocator does not hold."""
    free, total = torch.cuda.mem_get_info()
    return total - free - torch.cuda.memory_reserved()


def test_no_memory_growth_over_10000_calls():
    calls = _calls("cuda", seed=5, small=True)
    for c in calls:  # first calls load modules and set kernel attributes
        c()
    torch.cuda.synchronize()
    allocated, outside = torch.cuda.memory_allocated(), _outside_allocator()
    for i in range(10_000):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    grown_outside = _outside_allocator() - outside
    _report("memory_growth", {"calls": 10_000, "allocated_before": allocated,
                              "allocated_after": torch.cuda.memory_allocated(),
                              "outside_allocator_growth": grown_outside})
    assert torch.cuda.memory_allocated() == allocated
    # mem_get_info sees the whole device: other pytest-xdist workers on this GPU allocate too,
    # so the outside-the-allocator check only means something in a process that has it alone.
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) <= 1:
        assert grown_outside <= 16 * 2**20, f"{grown_outside} bytes of device memory taken outside the caching allocator"


def _granule(nbytes: int) -> int:
    return -(-nbytes // 512) * 512  # the caching allocator rounds every block up to 512 bytes


# The bound on one call's peak extra memory (bytes over what was allocated before the call):
#   output + one int8 copy of x (M*K) + row scales (4*M) [+ weight sums (4*N), shift mode]
#   + split-K workspace S*M*N*4 with S <= ceil(K / 512) (each split keeps >= 4 K tiles of 128),
#     allowed only for M <= 256 (at larger M the output tiles fill the GPU without splitting)
#   + SCRATCH for fixed-size buffers (tile counters, semaphores),
# each allocation rounded up to the allocator's 512-byte granule.
SCRATCH = 4096


def _peak_bound(op: str, m: int, k: int, n: int, out_bytes: int, shift: bool):
    parts = {"output": _granule(out_bytes)}
    if op == "matmul":
        parts["x_codes"] = _granule(m * k)
        parts["row_scales"] = _granule(4 * m)
        if shift:
            parts["weight_sums"] = _granule(4 * n)
    splits = max(1, math.ceil(k / 512))
    if m <= 256 and splits > 1:
        parts["split_k_workspace"] = _granule(splits * m * n * 4)
    parts["scratch"] = SCRATCH
    return sum(parts.values()), parts


@pytest.mark.parametrize(
    "op,mode,m",
    [("matmul", "dynamic", 1), ("matmul", "dynamic", 64), ("matmul", "dynamic", 4096),
     ("matmul", "shift", 64), ("matmul", "shift", 4096), ("scaled_mm", "per_row", 1)],
)
def test_peak_extra_memory_of_one_call(op, mode, m):
    k = n = 4096
    g = torch.Generator(device="cuda")
    g.manual_seed(m)
    qweight = torch.randint(-127, 128, (n, k), generator=g, device="cuda", dtype=torch.int8)
    w_scale = torch.rand(n, generator=g, device="cuda") * 0.01
    if op == "matmul":
        x = torch.randn(m, k, generator=g, device="cuda").half()
        # Static parameters on the CPU: no device memory of their own.
        extra = (torch.tensor([0.03]), torch.tensor([0.1])) if mode == "shift" else ()

        def call():
            return int8q.matmul(x, qweight, w_scale, *extra)
    else:
        xq = torch.randint(-127, 128, (m, k), generator=g, device="cuda", dtype=torch.int8)
        x_scale = torch.rand(m, generator=g, device="cuda")

        def call():
            return int8q.scaled_mm(xq, qweight, x_scale, w_scale)

    call()  # warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    bound, parts = _peak_bound(op, m, k, n, out.numel() * out.element_size(), mode == "shift")
    _report("peak_memory", {"op": op, "mode": mode, "M": m, "K": k, "N": n, "peak_extra_bytes": peak,
                            "bound_bytes": bound, "output_bytes": out.numel() * out.element_size(),
                            "bound_parts": parts, "device": torch.cuda.get_device_name()})
    assert peak <= bound, f"peak extra memory {peak} B > bound {bound} B ({parts})"


# ---------------------------------------------------------------------------------------------
# Exact int32 accumulation at the K limit

K_MAX = reference.MAX_K  # 131071: the generic path (K % 16 != 0)
K_MAX_ALIGNED = K_MAX // 16 * 16  # 131056: the largest K the tensor-core paths take
CODE_ROWS = (127, -127, -128)  # per-row constant codes: |acc| up to 128 * 128 * K < 2**31


def _constant_rows(values, k, device="cuda"):
    return torch.tensor(values, dtype=torch.int8, device=device)[:, None].expand(len(values), k).contiguous()


def _exact_float32(xv, wv, k):
    """float32 of the exact integer sum_k xv * wv, as a [len(xv), len(wv)] tensor."""
    exact = [[x * w * k for w in wv] for x in xv]
    assert max(abs(v) for row in exact for v in row) < 2**31
    return torch.tensor(exact, dtype=torch.float64).float()


@pytest.mark.parametrize("k", [K_MAX, K_MAX_ALIGNED])
@pytest.mark.parametrize("m", [1, 17, 300])
def test_scaled_mm_is_exact_at_the_k_limit(m, k):
    """All-127 / -127 / -128 rows against all-127 / -127 / -128 weight rows, unit scales,
    float32 out: the output is the exact integer (rounded once to float32)."""
    xv = [CODE_ROWS[i % 3] for i in range(m)]
    wv = [127, -127, -128, -128, 127, -127]
    out = int8q.scaled_mm(_constant_rows(xv, k), _constant_rows(wv, k), torch.ones(m, device="cuda"),
                          torch.ones(1, device="cuda"), out_dtype=torch.float32)
    assert torch.equal(out.cpu(), _exact_float32(xv, wv, k))


@pytest.mark.parametrize("k", [K_MAX, K_MAX_ALIGNED])
@pytest.mark.parametrize("m", [1, 17, 300])
@pytest.mark.parametrize("mode", ["dynamic", "shift"])
def test_matmul_is_exact_at_the_k_limit(mode, m, k):
    """float32 activations whose codes are all +-127 (dynamic: constant rows) or all -128
    (static with shift: x = shift - 128 * scale), against weight rows of +-127 / -128."""
    wv = [127, -127, -128, -128, 127, -127]
    qweight = _constant_rows(wv, k)
    w_scale = torch.ones(len(wv), device="cuda")
    if mode == "dynamic":
        xv = [1.0 if i % 2 == 0 else -1.0 for i in range(m)]
        args = ()
        codes = [127 if v > 0 else -127 for v in xv]
    else:
        xv = [-127.5] * m  # (x - 0.5) / 1 = -128
        args = (torch.tensor([1.0]), torch.tensor([0.5]))
        codes = [-128] * m
    x = torch.tensor(xv, device="cuda")[:, None].expand(m, k).contiguous()
    out = int8q.matmul(x, qweight, w_scale, *args)
    expected = reference.matmul(x, qweight, w_scale, *args)
    assert torch.equal(out, expected)
    # And the reference itself is the exact integer product, dequantized in float32.
    acc = _exact_float32(codes, wv, k)
    if mode == "dynamic":
        exact = acc * torch.tensor([1.0 / 127], dtype=torch.float32).expand(m)[:, None].float()
        torch.testing.assert_close(expected.cpu(), exact, rtol=2**-22, atol=0)
    else:
        w_sum = torch.tensor([w * k for w in wv], dtype=torch.float32)
        torch.testing.assert_close(expected.cpu(), acc + 0.5 * w_sum, rtol=0, atol=0)


def test_k_past_the_limit_is_rejected():
    k = K_MAX + 1
    x = torch.zeros(1, k, device="cuda", dtype=torch.float16)
    qweight = torch.zeros(1, k, device="cuda", dtype=torch.int8)
    ones = torch.ones(1, device="cuda")
    for call in (lambda: int8q.matmul(x, qweight, ones),
                 lambda: int8q.scaled_mm(qweight, qweight, ones, ones),
                 lambda: int8q.quantize_activation(x),
                 lambda: int8q.quantize_weight(x)):
        with pytest.raises(RuntimeError, match=f"at most {K_MAX}"):
            call()
