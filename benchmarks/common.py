"""What the int8q benchmarks share: shapes, the GPU timer, input rotation, machine facts, output files."""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

# Linear layers of Llama-style models (K in, N out): attention projection, MLP up/gate and
# down of an 8B model, and the MLP up/gate of a 70B model.
LINEAR_SHAPES: List[Tuple[int, int]] = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)]
TOKEN_COUNTS: List[int] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
QUICK_TOKEN_COUNTS: List[int] = [1, 16, 128, 1024, 8192]

# Rotated inputs are sized from this many bytes at least, so a timed call never finds its
# operands in L2 from an earlier call (H100/H200 L2 is 50-60 MB).
ROTATION_BYTES = 256 * 2**20


# ---------------------------------------------------------------- command line and GPU


def parse_int_list(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    """"4096x4096,8192x28672" -> [(4096, 4096), (8192, 28672)]."""
    shapes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not match:
            raise argparse.ArgumentTypeError(f"expected AxB[,AxB...] (e.g. 4096x14336), got {item!r}")
        shapes.append((int(match.group(1)), int(match.group(2))))
    return shapes


def add_timing_args(parser: argparse.ArgumentParser, warmup_ms: float, rep_ms: float) -> None:
    parser.add_argument("--warmup-ms", type=float, default=warmup_ms, help=f"warm-up per timing, ms (default {warmup_ms})")
    parser.add_argument("--rep-ms", type=float, default=rep_ms, help=f"timed GPU work per timing, ms (default {rep_ms})")
    parser.add_argument("--out", default=DEFAULT_RESULTS_DIR, help="directory for the result files (default benchmarks/results)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the inputs")


ROUNDS_NOTE = (
    " Each case is timed in rounds (the methods in an order rotated by one per round) and each"
    " method reports its median round, so a stall of the card in one round or the order of the"
    " methods does not move a number."
)


def add_rounds_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per case, each method timed for rep-ms / rounds in each, in an order "
                             "rotated by one per round; the median round is reported (default 3)")


def check_rounds(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")


def rotated(items: Sequence, r: int) -> List:
    """The order of round r: items starting at index r (mod len)."""
    shift = r % len(items)
    return list(items[shift:]) + list(items[:shift])


def median_round(values: Sequence, key: Optional[Callable] = None):
    """The median of a method's rounds (the lower middle of an even count)."""
    return sorted(values, key=key)[(len(values) - 1) // 2]


def time_in_rounds(fns: Dict[str, Callable[[], object]],
                   args: argparse.Namespace) -> Dict[str, List["Timing"]]:
    """Each no-argument call timed in args.rounds rounds, the order rotated by one per round and
    args.rep_ms split over the rounds: every name's rounds, in order (median_round picks one)."""
    rounds: Dict[str, List[Timing]] = {name: [] for name in fns}
    for r in range(args.rounds):
        for name in rotated(list(fns), r):
            rounds[name].append(time_cuda(fns[name], args.warmup_ms, args.rep_ms / args.rounds))
    return rounds


def apply_quick_timings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--quick shortens warm-up and timed work to 10 / 30 ms, where the user left the defaults."""
    if args.quick:
        if args.warmup_ms == parser.get_default("warmup_ms"):
            args.warmup_ms = 10.0
        if args.rep_ms == parser.get_default("rep_ms"):
            args.rep_ms = 30.0


def require_cuda(script: str) -> torch.device:
    """The CUDA device to benchmark on, or exit with a message a user can act on."""
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        sys.exit(f"{script}: {why} (torch {torch.__version__}). Run it on a machine with an NVIDIA GPU, "
                 f"e.g. through tools/gpu_suite.sh.")
    return torch.device("cuda", torch.cuda.current_device())


def load_int8q() -> Tuple[Optional[object], str]:
    """(the int8q module, '') when its CUDA kernels are usable, else (None, why not)."""
    try:
        import int8q
    except Exception as exc:  # an unbuilt or broken extension should not stop the baselines
        return None, f"import int8q failed: {exc}"
    if not int8q.has_cuda_kernels():
        return None, "int8q was built without CUDA kernels"
    return int8q, ""


def load_triton_int8() -> Tuple[Optional[object], str]:
    """(the Triton baseline module, '') or (None, why not)."""
    try:
        import triton_int8
    except Exception as exc:  # absent or broken triton: the other methods still run
        return None, f"triton is unusable ({short_error(exc)})"
    return triton_int8, ""


# ---------------------------------------------------------------- timing


@dataclass
class Timing:
    median_us: float
    p20_us: float
    p80_us: float
    samples: int
    calls_per_sample: int


_spin_cycles_per_us: Optional[float] = None


def _spin(us: float) -> None:
    """Keep the stream busy for about ``us`` microseconds so the host can queue work ahead."""
    global _spin_cycles_per_us
    if _spin_cycles_per_us is None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)  # first launch loads the kernel
        start.record()
        torch.cuda._sleep(2_000_000)
        end.record()
        end.synchronize()
        _spin_cycles_per_us = 2_000_000 / (start.elapsed_time(end) * 1000.0)
    torch.cuda._sleep(int(us * _spin_cycles_per_us))


def time_cuda(fn: Callable[[], object], warmup_ms: float, rep_ms: float, min_samples: int = 10) -> Timing:
    """Median GPU time of one ``fn()`` call, in microseconds, measured with CUDA events.

    Each sample times a run of back-to-back calls and divides by their number; the result is
    the median sample with its 20th and 80th percentiles. Python and launch overhead stay out
    of the numbers, as they would under CUDA graphs: where the host issues a call more slowly
    than the GPU runs it, a spin kernel holds the stream while the host queues the sample.
    """
    fn()
    torch.cuda.synchronize()

    probe_calls = 5
    _spin(5_000)  # the host measures its own issue time while the GPU is busy elsewhere
    t0 = time.perf_counter()
    for _ in range(probe_calls):
        fn()
    host_us = (time.perf_counter() - t0) * 1e6 / probe_calls
    torch.cuda.synchronize()

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _spin(host_us * probe_calls * 1.5 + 50)
    start.record()
    for _ in range(probe_calls):
        fn()
    end.record()
    end.synchronize()
    gpu_us = max(start.elapsed_time(end) * 1000.0 / probe_calls, 0.5)

    # Where the host issues calls more slowly than the GPU runs them, each sample starts behind
    # a spin long enough for the host to queue the whole sample (with half its cost in margin).
    host_bound = 1.5 * host_us > gpu_us
    for _ in range(max(1, int(warmup_ms * 1000 / gpu_us))):
        fn()

    total_calls = max(min_samples, int(rep_ms * 1000 / gpu_us))
    per_sample = max(1, min(100, total_calls // min_samples))
    n_samples = max(min_samples, math.ceil(total_calls / per_sample))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n_samples)]
    for begin, finish in events:
        if host_bound:
            _spin((1.5 * host_us - gpu_us) * per_sample + 20)
        begin.record()
        for _ in range(per_sample):
            fn()
        finish.record()
    torch.cuda.synchronize()

    times = sorted(b.elapsed_time(f) * 1000.0 / per_sample for b, f in events)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return Timing(statistics.median(times), q[1], q[7], n_samples, per_sample)


class Rotation:
    """Copies of one set of tensors: a timed call that cycles through them reads memory, not L2."""

    def __init__(self, *tensors: torch.Tensor):
        self._sets = [tuple(tensors)]

    def take(self, copies: int) -> List[Tuple[torch.Tensor, ...]]:
        while len(self._sets) < copies:
            self._sets.append(tuple(t.clone() for t in self._sets[0]))
        return self._sets[:copies]


def rotation_copies(bytes_per_call: int, device: torch.device, bytes_per_copy: Optional[int] = None) -> int:
    """How many input copies a call with this working set needs so it never runs from L2.

    Working sets over 3x L2 evict themselves: one copy. Smaller ones get enough copies for
    ROTATION_BYTES, bounded by a quarter of the free memory.
    """
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    if bytes_per_call >= 3 * l2:
        return 1
    wanted = math.ceil(max(ROTATION_BYTES, 4 * l2) / max(bytes_per_call, 1))
    free, _ = torch.cuda.mem_get_info(device)
    affordable = max(1, free // 4 // max(bytes_per_copy or bytes_per_call, 1))
    return int(min(wanted, affordable))


def cycle_calls(call: Callable[..., object], arg_sets: Sequence[Tuple]) -> Callable[[], object]:
    """A no-argument closure that calls ``call(*args)`` on the next argument set each time."""
    sets = itertools.cycle(arg_sets)
    return lambda: call(*next(sets))


def m_sweep_setup(script: str, description: str, default_m: Sequence[int]
                  ) -> Tuple[argparse.Namespace, Optional[torch.device], Optional[object]]:
    """Arguments (--m, --shapes, rounds and timing), the GPU and int8q of an M-sweep script
    (bench_dispatch.py, bench_shifted.py). int8q is None when it cannot be loaded (printed);
    the torch seed is set to 0."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=parse_int_list, default=list(default_m))
    parser.add_argument("--shapes", type=parse_shapes, default=LINEAR_SHAPES)
    add_rounds_arg(parser)
    add_timing_args(parser, warmup_ms=10, rep_ms=40)
    args = parser.parse_args()
    check_rounds(args, parser)
    device = require_cuda(script)
    int8q, why = load_int8q()
    if int8q is None:
        print(f"{script}: {why}", file=sys.stderr)
        return args, device, None
    torch.manual_seed(0)
    return args, device, int8q


def quantized_linear(int8q, device: torch.device, k: int, n: int) -> Tuple[torch.Tensor, ...]:
    """(qweight, w_scale, w): a random fp16 layer weight [N, K] (std 1/sqrt(K)) and int8q's
    quantization of it."""
    w = torch.randn(n, k, device=device, dtype=torch.float16) / k**0.5
    qw, ws = int8q.quantize_weight(w)
    return qw, ws, w


def write_m_sweep(args: argparse.Namespace, device: torch.device, stem: str, title: str,
                  header: Sequence[str], rows: List[List[object]], records: List[Dict[str, object]],
                  intro: str = "") -> None:
    """<stem>_<card>.json (machine + records) and .md (title, machine, intro, table) in args.out."""
    machine = machine_info(device)
    slug = card_slug(machine["device_name"])
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, f"{stem}_{slug}.json"), {"machine": machine, "results": records})
    write_text(os.path.join(args.out, f"{stem}_{slug}.md"),
               f"# {title}\n\n" + machine_markdown(machine, TIMING_NOTE + ROUNDS_NOTE) + "\n" + intro
               + markdown_table(header, rows, 1))


def sweep_by_m(args: argparse.Namespace, device: torch.device,
               methods: Dict[str, Callable[..., torch.Tensor]],
               weights_for: Callable[[int, int], Tuple[torch.Tensor, ...]],
               x_offset: float = 0.0) -> Tuple[List[List[object]], List[Dict[str, object]]]:
    """Every method against ``F.linear`` fp16 at each (K, N) of args.shapes and M of args.m.

    ``weights_for(k, n)`` gives the weight tensors, the fp16 weight last; a method is called
    as ``fn(x, *weights)`` with ``x`` [M, K] fp16 (normal, + x_offset). Inputs rotate past
    L2; a method whose output is off fp16's by more than 5% is reported, not timed. Each case
    is timed in rounds (time_in_rounds) and each method keeps its median round. Returns the
    table rows ("K x N", M, fp16 us, then "us (speedup)" per method) and one record per case.
    """
    import torch.nn.functional as F

    rows: List[List[object]] = []
    records: List[Dict[str, object]] = []
    fp16_linear = lambda x, *weights: F.linear(x, weights[-1])  # noqa: E731
    for k, n in args.shapes:
        weights = weights_for(k, n)
        for m in args.m:
            x = torch.randn(m, k, device=device, dtype=torch.float16) + x_offset
            copies = rotation_copies(n * k * 3 + m * k * 2, device, bytes_per_copy=n * k * 3)
            sets = Rotation(x, *weights).take(copies)
            ref = fp16_linear(x, *weights)
            row: List[object] = [f"{k}x{n}", m]
            rec: Dict[str, object] = {"k": k, "n": n, "m": m}
            live = {"fp16": fp16_linear}
            for name, fn in methods.items():
                err = rel_err(fn(x, *weights), ref)
                if err > 5e-2:
                    rec[name] = None
                    rec[name + "_error"] = err
                else:
                    live[name] = fn
            fns = {name: cycle_calls(fn, sets) for name, fn in live.items()}
            times = {name: [t.median_us for t in ts] for name, ts in time_in_rounds(fns, args).items()}
            med = {name: median_round(ts) for name, ts in times.items()}
            fp16 = med["fp16"]
            rec["fp16_us"] = fp16
            row.append(fmt_us(fp16))
            for name in methods:
                if name not in med:
                    row.append(f"MISMATCH {rec[name + '_error']:.2g}")
                    continue
                rec[name + "_us"] = med[name]
                rec[name + "_round_us"] = times[name]
                row.append(f"{fmt_us(med[name])} ({fp16 / med[name]:.2f}x)")
            rows.append(row)
            records.append(rec)
            print(" | ".join(str(c) for c in row), flush=True)
    return rows, records


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F in float32; inf when anything is NaN or Inf."""
    out, ref = out.float(), ref.float()
    err = (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)).item()
    return err if math.isfinite(err) else math.inf


def cuda_context_ok(device: torch.device) -> bool:
    """False after a sticky CUDA error (illegal address, kernel fault): every later call would fail."""
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except Exception:
        return False


def short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:200]


# ---------------------------------------------------------------- machine facts


def _command_output(args: Sequence[str]) -> Optional[str]:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def git_commit() -> Optional[str]:
    # INT8Q_COMMIT names the commit where the checkout's git metadata cannot (a copied tree).
    if os.environ.get("INT8Q_COMMIT"):
        return os.environ["INT8Q_COMMIT"]
    commit = _command_output(["git", "rev-parse", "--short=12", "HEAD"])
    if commit and _command_output(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += "+dirty"
    return commit


def machine_info(device: torch.device) -> Dict[str, object]:
    props = torch.cuda.get_device_properties(device)
    driver = _command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index}"])
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device_name": torch.cuda.get_device_name(device),
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "l2_bytes": props.L2_cache_size,
        "memory_bytes": props.total_memory,
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "int8q_commit": git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def card_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3' (for file names)."""
    return re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_") or "gpu"


# ---------------------------------------------------------------- output files


def write_json(path: str, payload: Dict[str, object]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)  # a run killed mid-write leaves the previous file whole


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align_right_from: int = 0) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i >= align_right_from else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_markdown(machine: Dict[str, object], timing_note: str) -> str:
    return (
        f"{machine['device_name']} (sm_{str(machine['capability']).replace('.', '')}, {machine['sm_count']} SMs, "
        f"L2 {int(machine['l2_bytes']) / 2**20:.0f} MiB), driver {machine['driver'] or 'unknown'}; "
        f"torch {machine['torch']}, CUDA {machine['cuda']}, triton {machine['triton'] or 'absent'}; "
        f"int8q {machine['int8q_commit'] or 'commit unknown'}; {machine['date_utc']}.\n\n{timing_note}\n"
    )


TIMING_NOTE = (
    "Times are medians over samples of back-to-back calls timed with CUDA events; inputs small "
    "enough to stay in L2 are rotated among copies totalling at least 256 MiB, and launch "
    "overhead is kept out of the numbers."
)


def fmt_us(us: float) -> str:
    return f"{us:.1f}" if us < 1000 else f"{us:.0f}"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"
