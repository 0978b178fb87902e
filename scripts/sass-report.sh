#!/usr/bin/env bash
# The sm_90 machine code of every kernel, from the PTX that build.rs embedded: assembles each PTX file with ptxas
# (-arch=sm_90 -v: registers, spills, stack, static shared memory), disassembles the result with nvdisasm, and
# prints one markdown table row per kernel with those numbers and the counts of the tensor-core instructions:
# HMMA (mma.sync), LDSM (ldmatrix) and LDGSTS (cp.async).
#
# Usage: scripts/sass-report.sh [--check] [--write-docs]
#   (no flag)     print the table
#   --check       also exit non-zero, naming the kernels, when any kernel spills (spill stores or loads > 0 bytes),
#                 or when a tensor-core kernel has no HMMA (ptxas turned its mma.sync into something else, or the
#                 code path with it was compiled out). Tensor-core kernels are those whose name ends in `_mma`;
#                 while there are none, only the spill rule can fail.
#   --write-docs  replace the table in docs/kernels.md, between `<!-- sass-report begin -->` and
#                 `<!-- sass-report end -->`
#
# Needs a release build made with NVRTC (scripts/install-nvrtc.sh; CARGO_TARGET_DIR is honoured), or
# SASS_PTX_DIR naming a folder of .ptx files to report on instead (how the --check rules were tried on hand-written
# PTX with and without mma.sync, without adding kernels to the crate). Installs, once,
# into .nvcc/ (gitignored) with pip: ptxas from nvidia-cuda-nvcc-cu12 12.9.86, the same CUDA as the NVRTC that made
# the PTX, and nvdisasm from nvidia-cuda-nvdisasm 13.4.92 (PyPI has no CUDA 12 nvdisasm or cuobjdump wheel; CUDA
# 13's disassembles sm_90 cubins, and cuobjdump -sass would only call it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
check=0
write_docs=0
for a in "$@"; do
  case "$a" in
    --check) check=1 ;;
    --write-docs) write_docs=1 ;;
    *) echo "usage: $0 [--check] [--write-docs]" >&2; exit 2 ;;
  esac
done
arch=sm_90

ptxas="$root/.nvcc/nvidia/cuda_nvcc/bin/ptxas"
nvdisasm="$root/.nvcc/nvdisasm/nvidia/cu13/bin/nvdisasm"
pip_install() { python3 -m pip install --quiet --disable-pip-version-check --target "$1" "$2" >&2; }
[ -x "$ptxas" ] || pip_install "$root/.nvcc" nvidia-cuda-nvcc-cu12==12.9.86
[ -x "$nvdisasm" ] || pip_install "$root/.nvcc/nvdisasm" nvidia-cuda-nvdisasm==13.4.92
for tool in "$ptxas" "$nvdisasm"; do
  [ -x "$tool" ] || { echo "$tool missing after the pip install" >&2; exit 1; }
done

# The newest build's OUT_DIR: build.rs writes kernels.rs and, with NVRTC, one NAME.ptx per NAME.cu there.
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -n "${SASS_PTX_DIR:-}" ]; then
  out="$SASS_PTX_DIR"
else
  table=$(ls -t "$target"/release/build/ddpm-*/out/kernels.rs 2>/dev/null | head -n 1 || true)
  out=$(dirname "${table:-.}")
fi
if ! ls "$out"/*.ptx >/dev/null 2>&1; then
  echo "no PTX under $target/release/build: cargo build --release with NVRTC first (scripts/install-nvrtc.sh)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows="$tmp/rows"
: > "$rows"
for f in "$out"/*.ptx; do
  name=$(basename "$f" .ptx)
  # The .cu file it came from: every kernel file is under src/ or kernels/, and their names are distinct.
  cu=$(cd "$root" && find src kernels -name "$name.cu" | head -n 1)
  if ! "$ptxas" -arch="$arch" -v "$f" -o "$tmp/$name.cubin" 2> "$tmp/$name.log"; then
    cat "$tmp/$name.log" >&2
    echo "ptxas failed on $f" >&2
    exit 1
  fi
  # -c: code sections only; its warnings about the ELF flavour are noise, a failure is not.
  if ! "$nvdisasm" -c "$tmp/$name.cubin" > "$tmp/$name.sass" 2> "$tmp/$name.dis.log"; then
    cat "$tmp/$name.dis.log" >&2
    echo "nvdisasm failed on the cubin of $f" >&2
    exit 1
  fi
  # kernel -> "HMMA LDSM LDGSTS" counts, from the disassembly's `.text.NAME:` sections.
  awk '
    /^\.text\..*:$/ { k = substr($1, 7, length($1) - 7); h[k] += 0; l[k] += 0; g[k] += 0; next }
    /[ \t]HMMA[. ]/ { h[k]++ }
    /[ \t]LDSM[. ]/ { l[k]++ }
    /[ \t]LDGSTS[. ]/ { g[k]++ }
    END { for (k in h) print k, h[k], l[k], g[k] }' "$tmp/$name.sass" > "$tmp/$name.counts"
  # One row per kernel: file kernel registers spill-stores spill-loads stack smem hmma ldsm ldgsts.
  awk -v file="${cu:-$name.cu}" -v counts="$tmp/$name.counts" '
    BEGIN { while ((getline line < counts) > 0) { split(line, c, " "); ins[c[1]] = c[2] " " c[3] " " c[4] } }
    /Compiling entry function/ { match($0, /'\''[^'\'']+'\''/); k = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      print file, k, regs, st, ld, stack, smem, (k in ins ? ins[k] : "? ? ?") }' "$tmp/$name.log" >> "$rows"
done
sort -k1,1 -k2,2 "$rows" -o "$rows"

{
  echo "| file | kernel | registers | spill stores / loads (bytes) | stack (bytes) | static shared (bytes) | HMMA | LDSM | LDGSTS |"
  echo "|---|---|---|---|---|---|---|---|---|"
  awk '{ printf "| %s | `%s` | %s | %s / %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' "$rows"
} > "$tmp/table.md"
cat "$tmp/table.md"

if [ $write_docs -eq 1 ]; then
  docs="$root/docs/kernels.md"
  grep -q '^<!-- sass-report begin -->$' "$docs" && grep -q '^<!-- sass-report end -->$' "$docs" || {
    echo "$docs has no <!-- sass-report begin --> / <!-- sass-report end --> lines" >&2
    exit 1
  }
  awk -v table="$tmp/table.md" '
    /^<!-- sass-report begin -->$/ { print; print ""; while ((getline line < table) > 0) print line; print ""; skip = 1; next }
    /^<!-- sass-report end -->$/ { skip = 0 }
    !skip' "$docs" > "$tmp/kernels.md"
  cp "$tmp/kernels.md" "$docs"
  echo "wrote the table into docs/kernels.md" >&2
fi

if [ $check -eq 1 ]; then
  problems=$(awk '
    $4 + 0 > 0 || $5 + 0 > 0 { printf "%s: %s spills (%s bytes stored, %s loaded)\n", $1, $2, $4, $5 }
    $2 ~ /_mma$/ && $8 + 0 == 0 { printf "%s: %s is a tensor-core kernel (_mma) without HMMA instructions\n", $1, $2 }' "$rows")
  mma=$(awk '$2 ~ /_mma$/' "$rows" | wc -l)
  if [ -n "$problems" ]; then
    echo "sass-report --check failed:" >&2
    echo "$problems" >&2
    exit 1
  fi
  echo "sass-report --check: $(wc -l < "$rows") kernels, none spills; $mma tensor-core (_mma) kernels, each with HMMA" >&2
fi
