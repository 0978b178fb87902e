#!/usr/bin/env bash
# Prints sm_90 register, spill and shared-memory use of every kernel, from the PTX that build.rs embedded.
# Needs a build with NVRTC (see scripts/install-nvrtc.sh). Installs ptxas (nvidia-cuda-nvcc-cu12, the same
# CUDA 12.9 as the NVRTC that made the PTX) into .nvcc/ once. Usage: scripts/ptxas-report.sh [ARCH, default sm_90]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
arch="${1:-sm_90}"
ptxas="$root/.nvcc/nvidia/cuda_nvcc/bin/ptxas"
if [ ! -x "$ptxas" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$root/.nvcc" nvidia-cuda-nvcc-cu12==12.9.86 >&2
fi
# build.rs names each file's PTX after the .cu file: src/ops/conv/conv.cu -> $OUT_DIR/conv.ptx.
out=$(ls -td "$root"/target/release/build/ddpm-*/out 2>/dev/null | while read -r d; do [ -e "$d/conv.ptx" ] && echo "$d" && break; done)
[ -n "$out" ] || { echo "no PTX under target/release/build: build with NVRTC first (scripts/install-nvrtc.sh)" >&2; exit 1; }
echo "| file | kernel | registers | spill stores / loads (bytes) | stack (bytes) | shared (bytes) |"
echo "|---|---|---|---|---|---|"
for f in "$out"/*.ptx; do
  # The .cu file it came from: every kernel file is under src/ or kernels/, and their names are distinct.
  cu=$(cd "$root" && find src kernels -name "$(basename "$f" .ptx).cu" | head -n 1)
  "$ptxas" -arch="$arch" -v "$f" -o /dev/null 2>&1 | awk -v file="${cu:-$(basename "$f" .ptx).cu}" '
    /Compiling entry function/ { match($0, /'\''[^'\'']+'\''/); k = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
    /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15);
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11);
      printf "| %s | `%s` | %s | %s / %s | %s | %s |\n", file, k, regs, st, ld, stack, smem }'
done
