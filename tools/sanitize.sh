#!/usr/bin/env bash
# Run compute-sanitizer's memcheck, racecheck, initcheck and synccheck over every CUDA kernel
# path of int8q (tools/sanitize_cases.py), one log per tool, then print each ERROR SUMMARY.
#
# Usage: tools/sanitize.sh [LOG_DIR]        LOG_DIR default: $OUT, else /tmp/int8q-sanitize
# Environment:
#   TOOLS              the tools to run (default "memcheck racecheck initcheck synccheck")
#   SANITIZE_TIMEOUT   seconds allowed per tool (default 140; all four fit in 10 minutes)
#   COMPUTE_SANITIZER  the sanitizer binary (default: on PATH, else under the CUDA toolkit)
#   PYTHON             the interpreter that has torch and int8q (default python3)
# Exit status: 0 every tool clean; 1 a tool reported errors or a case failed or mismatched;
#   2 could not run or finish (no GPU or sanitizer, device not supported, a tool timed out).
#
# memcheck and initcheck run the full-size cases over every kernel; racecheck and synccheck
# run the small cases (same paths, smaller K and N) over int8q's kernels only, since they
# check each kernel on its own. PyTorch's caching allocator is off, so every tensor is its
# own cudaMalloc and an out-of-bounds access lands outside any allocation.
set -uo pipefail
cd "$(dirname "$0")/.."

logdir=${1:-${OUT:-/tmp/int8q-sanitize}}
tools=${TOOLS:-memcheck racecheck initcheck synccheck}
limit=${SANITIZE_TIMEOUT:-140}
py=${PYTHON:-python3}
mkdir -p "$logdir"
summary="$logdir/summary.txt"

find_sanitizer() {
  if [ -n "${COMPUTE_SANITIZER:-}" ]; then echo "$COMPUTE_SANITIZER"; return 0; fi
  command -v compute-sanitizer && return 0
  local c
  for c in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
           "${CUDA_HOME:-/usr/local/cuda}/compute-sanitizer/compute-sanitizer" \
           /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

say() { echo "$@" | tee -a "$summary"; }
: >"$summary"

# 1. The cases without a sanitizer: is there a GPU, and do the results match the reference?
"$py" tools/sanitize_cases.py --size full >"$logdir/plain.log" 2>&1
plain=$?
if [ $plain -eq 2 ]; then
  say "sanitize.sh: no CUDA device, or int8q has no CUDA kernels (see $logdir/plain.log)"
  exit 2
fi
"$py" -c 'import torch, int8q; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| int8q", int8q.__version__)' 2>&1 | tee -a "$summary"
say "plain run (no sanitizer): $(tail -n 1 "$logdir/plain.log")"

cs=$(find_sanitizer) || { say "sanitize.sh: compute-sanitizer not found (set COMPUTE_SANITIZER)"; exit 2; }
say "sanitizer: $cs ($("$cs" --version 2>/dev/null | grep -m1 -oE 'Version [0-9.]+' || echo 'version unknown'))"
help=$("$cs" --help 2>&1)
has() { grep -q -- "$1" <<<"$help"; }

common=(--error-exitcode 99 --print-limit 50)
has --report-api-errors && common+=(--report-api-errors no)  # PyTorch probes the API on purpose
has --launch-timeout && common+=(--launch-timeout 120)       # importing torch is slow under the tool
status=0
[ $plain -ne 0 ] && status=1
worst() { if [ "$1" -eq 1 ] || [ "$status" -eq 1 ]; then status=1; else status=$1; fi; }

printf '%-10s %-6s %-13s %-7s %s\n' tool size result errors "cases / notes" | tee -a "$summary"
for tool in $tools; do
  case $tool in
    memcheck)  size=full;  extra=(); has --padding && extra+=(--padding 256) ;;
    # initcheck does not see the Hopper GEMM's TMA bulk stores as writes: copying an output
    # they wrote in full (tests/test_cuda_kernels.py, test_scaled_mm_writes_every_output)
    # gave 7200 "uninitialized" reports for one 64 x 136 result. The copies out of the device
    # are therefore not checked; every kernel's reads still are.
    initcheck) size=full;  extra=(--check-api-memory-access no) ;;
    racecheck) size=small; extra=(--kernel-name kns=int8q) ;;
    synccheck) size=small; extra=(--kernel-name kns=int8q) ;;
    *) say "sanitize.sh: unknown tool $tool"; worst 2; continue ;;
  esac
  log="$logdir/$tool.log"
  t0=$SECONDS
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout --kill-after=20 "$limit" \
    "$cs" --tool "$tool" "${common[@]}" "${extra[@]}" "$py" tools/sanitize_cases.py --size "$size" >"$log" 2>&1
  rc=$?
  secs=$((SECONDS - t0))
  errors=$(grep -oE 'ERROR SUMMARY: [0-9]+ error' "$log" | tail -n 1 | grep -oE '[0-9]+')
  # racecheck ends with "RACECHECK SUMMARY: H hazards displayed (E errors, W warnings)"
  # instead of an ERROR SUMMARY line: count its errors and warnings.
  if [ -z "$errors" ] && [ "$tool" = racecheck ]; then
    errors=$(grep -oE 'RACECHECK SUMMARY: .*\(([0-9]+) errors, ([0-9]+) warnings\)' "$log" | tail -n 1 \
             | grep -oE '[0-9]+ (errors|warnings)' | awk '{ s += $1 } END { print s }')
  fi
  cases=$(grep -oE 'sanitize_cases: .*' "$log" | tail -n 1)
  note="${cases:-no case summary} [${secs}s, exit $rc]"
  race=$(grep -oE 'RACECHECK SUMMARY: .*' "$log" | tail -n 1)
  [ -n "$race" ] && note="$note; $race"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    result=TIMEOUT; worst 2
  elif grep -qiE 'device (is )?not supported' "$log"; then
    result=UNSUPPORTED; worst 2
  elif [ -z "$errors" ]; then
    result=NO-SUMMARY; worst 2  # the sanitizer did not finish (see the log's end)
  elif [ "$errors" -gt 0 ] || [ $rc -eq 99 ]; then
    result=ERRORS; worst 1
  elif [ $rc -ne 0 ]; then
    result=CASES-FAILED; worst 1
  else
    result=CLEAN
  fi
  printf '%-10s %-6s %-13s %-7s %s\n' "$tool" "$size" "$result" "${errors:--}" "$note" | tee -a "$summary"
  if [ "$result" != CLEAN ]; then
    grep -m 6 -E '^========= +(Invalid|Error|Race|Uninitialized|Barrier|Program hit|Warning|Malformed|Out-of-range)' "$log" \
      | sed 's/^/    /' | tee -a "$summary"
    grep -m 3 -E '(MISMATCH|FAILED) ' "$log" | sed 's/^/    /' | tee -a "$summary"
  fi
done
say "logs: $logdir ($(cd "$logdir" && ls | tr '\n' ' '))"
case $status in 0) verdict=clean ;; 1) verdict="errors found" ;; *) verdict=incomplete ;; esac
say "sanitize.sh: exit $status ($verdict)"
exit $status
