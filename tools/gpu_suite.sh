#!/usr/bin/env bash
# The one command for a GPU machine, run from anywhere in the repository: build int8q in place,
# run the tests, then the activation-quantize and matmul benchmarks. Every step runs even when
# an earlier one failed; the exit status is non-zero when any failed.
#
# Usage: tools/gpu_suite.sh [--no-build] [--no-tests] [--quick] [RESULTS_DIR]
#   RESULTS_DIR  where results and logs go: default $OUT if set, else benchmarks/results
#   --no-build   use the int8q already built in place (a warm machine that built it before)
#   --no-tests   skip pytest
#   --quick      fewer sizes and shorter timings in both benchmarks
# Environment:
#   MAX_JOBS              parallel compile jobs (default 16)
#   TORCH_CUDA_ARCH_LIST  GPU targets of the build (default: this card's only, to build fast)
#   SUITE_BUDGET_S        seconds the whole suite may take (default 570, under a 600 s device
#                         call): pytest and the matmul sweep are cut short to stay inside it
set -uo pipefail

build=1 tests=1 quick="" results=""
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=0 ;;
    --no-tests) tests=0 ;;
    --quick) quick=--quick ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) results=$1 ;;
  esac
  shift
done

cd "$(dirname "$0")/.." || exit 2
results=${results:-${OUT:-benchmarks/results}}
mkdir -p "$results" && results=$(cd "$results" && pwd) || exit 2
budget=${SUITE_BUDGET_S:-570}
export PYTHONUNBUFFERED=1
steps=()
failed=0

remaining() { echo $((budget - SECONDS)); }

# run_step NAME CMD...: run CMD with its output on screen and in $results/NAME.log.
run_step() {
  local name=$1 t0=$SECONDS rc
  shift
  echo "=== $name: $*"
  "$@" 2>&1 | tee "$results/$name.log"
  rc=$?
  steps+=("$name $rc $((SECONDS - t0))")
  [ "$rc" -eq 0 ] || failed=1
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}

{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1
  python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  python3 -c 'import triton; print("triton", triton.__version__)' 2>&1
  git rev-parse HEAD 2>/dev/null || echo "no git metadata"
} | tee "$results/environment.log"

if [ "$build" -eq 1 ]; then
  # Build with the system compiler: a toolchain that links libstdc++ statically into the
  # extension (the GPU image's CXX=/opt/gcc does) gives it a second copy of the C++ locale,
  # and formatting a number into an error message then segfaults.
  if command -v g++ >/dev/null && command -v gcc >/dev/null; then
    export CC=gcc CXX=g++ CUDAHOSTCXX=g++
  fi
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    cap=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)
    # sm_90 gets the arch-specific target: the wgmma kernels need sm_90a.
    [ "$cap" = "9.0" ] && cap=9.0a
    [ -n "$cap" ] && export TORCH_CUDA_ARCH_LIST=$cap
  fi
  echo "building for TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<setup.py default>}"
  run_step build env MAX_JOBS="${MAX_JOBS:-16}" python3 -m pip install --no-build-isolation --no-deps -e .
fi

if [ "$tests" -eq 1 ]; then
  # Leave about five minutes for the benchmarks.
  test_limit=$(( $(remaining) - 300 ))
  [ "$test_limit" -lt 60 ] && test_limit=60
  # pytest-xdist, where present, spreads the suite over processes (they share the GPU).
  xdist=()
  python3 -c 'import xdist' 2>/dev/null && xdist=(-n 8)
  run_step pytest timeout --signal=INT --kill-after=15 "$test_limit" python3 -m pytest -q "${xdist[@]}" tests
fi

run_step bench_quantize python3 benchmarks/bench_quantize.py --out "$results" $quick

matmul_budget=$(( $(remaining) - 30 ))  # the last case, the files and this summary
[ "$matmul_budget" -lt 30 ] && matmul_budget=30
run_step bench_matmul python3 benchmarks/bench_matmul.py --out "$results" --budget-s "$matmul_budget" $quick

echo
echo "=================== summary ($results)"
[ -f "$results/pytest.log" ] && { echo "--- pytest"; tail -n 1 "$results/pytest.log"; }
echo "--- activation quantize"
grep -E "% of copy|MISMATCH|ERROR|FATAL" "$results/bench_quantize.log" || tail -n 3 "$results/bench_quantize.log"
echo "--- matmul"
sed -n '/^== speedup over fp16/,$p' "$results/bench_matmul.log" | grep . || tail -n 5 "$results/bench_matmul.log"
echo "--- steps"
printf '%-16s %5s %8s\n' step exit seconds
for s in "${steps[@]}"; do
  read -r name rc secs <<<"$s"
  printf '%-16s %5s %8s\n' "$name" "$rc" "$secs"
done
echo "total ${SECONDS} s; results and logs in $results"
exit "$failed"
