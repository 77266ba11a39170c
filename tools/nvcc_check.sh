#!/usr/bin/env bash
# Compile one CUDA source of int8q on its own (no link), as the extension build would,
# printing the ptxas resource report (registers, shared memory, spills) per kernel.
# Usage: tools/nvcc_check.sh csrc/cuda/FILE.cu [ARCH ...]   (ARCH default: 80 89 90a)
set -euo pipefail
src=$1; shift
archs=("${@:-80 89 90a}")
[ $# -eq 0 ] && archs=(80 89 90a)
inc=$(python3 -c 'import torch.utils.cpp_extension as c; print(" ".join("-I"+p for p in c.include_paths(device_type="cuda")))' 2>/dev/null)
gencode=()
for a in "${archs[@]}"; do gencode+=("-gencode=arch=compute_${a},code=sm_${a}"); done
out=$(mktemp -d)
nvcc -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -DNDEBUG -DINT8Q_HAVE_SM90A \
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
  -D__CUDA_NO_HALF2_OPERATORS__ -Xptxas=-v $inc "${gencode[@]}" -c "$src" -o "$out/obj.o"
echo "compiled $src for ${archs[*]} -> $out/obj.o"
