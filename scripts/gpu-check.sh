#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run the prebuilt binaries on the real device and print
# everything docs/gpu-runs.md records. Nothing is compiled on the GPU machine (it may have no Rust toolchain).
#
# Here, on the build machine (NVRTC installed, so the kernels are embedded as PTX and the GPU needs no NVRTC):
#   export LD_LIBRARY_PATH="$(scripts/install-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
#   scripts/gpu-check.sh --prepare     # cargo build + cargo test --no-run, copies the binaries into .gpu/
# Then on the GPU machine, from the repository root with .gpu/ carried along:
#   scripts/gpu-check.sh               # about 3-5 minutes; every step has its own time limit, all under 8 minutes
# Output goes to stdout and to $OUT/gpu-check.log ($OUT, when set, is what the device runner brings back; the run
# folder with its sample grids is copied there too), else to runs/gpu-check/.
#
# Steps: ddpm info; the tensor-core layout tests (tests/tensor_core_layout.rs: mma.sync, ldmatrix and cp.async
# against the PTX ISA's layouts); the kernel tests (each op family's tests.rs, in the library's unit-test binary) and the model
# tests (tests/emu_model.rs) on the device (their `--ignored` CUDA variants) and the classifier's; one epoch of the reference's recipe (with its FID at the end);
# DDPM and DDIM-50 sampling from its checkpoint; `ddpm eval` of DDIM-50 at n = 1000; `ddpm bench` train-step and sampler-step times. A failing step is reported and the others still
# run; the exit status is non-zero if any failed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin_dir="$root/.gpu"

if [ "${1:-}" = "--prepare" ]; then
  set -e
  cargo build --release
  # `cargo test --no-run` prints "Executable tests/NAME.rs (target/release/deps/NAME-hash)" for each test binary,
  # and "Executable unittests src/lib.rs (...)" for the library's, which holds the kernel tests (lib_tests here).
  listing=$(cargo test --release --no-run --lib --test emu_model --test classifier --test tensor_core_layout 2>&1)
  mkdir -p "$bin_dir"
  for t in lib_tests emu_model classifier tensor_core_layout; do
    src="tests/$t.rs"
    [ "$t" = lib_tests ] && src="unittests src/lib.rs"
    path=$(echo "$listing" | sed -n "s|.*Executable $src (\(.*\))|\1|p")
    [ -n "$path" ] || { echo "no test binary for $t in:"; echo "$listing"; exit 1; } >&2
    cp "$path" "$bin_dir/$t"
  done
  cp "${CARGO_TARGET_DIR:-target}/release/ddpm" "$bin_dir/ddpm"
  git rev-parse HEAD > "$bin_dir/COMMIT"
  if echo "$listing" | grep -q "libnvrtc not found"; then
    echo "warning: built without NVRTC: the GPU machine will need libnvrtc to compile the kernels at run time" >&2
  fi
  echo "prepared $bin_dir: $(ls "$bin_dir" | tr '\n' ' ')(commit $(cat "$bin_dir/COMMIT"))"
  exit 0
fi

for f in ddpm lib_tests emu_model classifier tensor_core_layout COMMIT; do
  [ -e "$bin_dir/$f" ] || { echo "missing $bin_dir/$f: run scripts/gpu-check.sh --prepare on the build machine first" >&2; exit 2; }
done
out="${OUT:-$root/runs/gpu-check}"
run="$root/runs/gpu-check/reference-epoch1"
mkdir -p "$out" "$(dirname "$run")"
rm -rf "$run"
log="$out/gpu-check.log"
exec > >(tee "$log") 2>&1
# The test binaries read tests/golden under the crate root; it is here, not where they were built.
export CARGO_MANIFEST_DIR="$root"
failed=()

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under a time limit and prints its wall time and status.
step() {
  local name=$1 limit=$2
  shift 2
  echo
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ $rc -eq 0 ] || failed+=("$name (exit $rc)")
}

echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cat "$bin_dir/COMMIT")"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "(nvidia-smi not available)"
step "ddpm info" 60 "$bin_dir/ddpm" info
if ! "$bin_dir/ddpm" info 2>/dev/null | grep -q "(--device auto) run on CUDA"; then
  echo "=== no usable CUDA device (see ddpm info above): nothing else to check here"
  exit 1
fi
step "tensor-core layout tests on CUDA" 60 "$bin_dir/tensor_core_layout" --ignored
step "kernel tests on CUDA" 120 "$bin_dir/lib_tests" --ignored ::cuda
step "model tests on CUDA" 120 "$bin_dir/emu_model" --ignored --nocapture
step "classifier tests on CUDA" 60 "$bin_dir/classifier" --ignored
step "train: one epoch of the reference recipe" 300 "$bin_dir/ddpm" train --device cuda --recipe reference --epochs 1 --out "$run"
ckpt="$run/checkpoint.safetensors"
step "sample DDIM-50" 60 "$bin_dir/ddpm" sample --device cuda --checkpoint "$ckpt" --sampler ddim --steps 50 --out "$run/sample_ddim50.png"
step "sample DDPM-1000" 120 "$bin_dir/ddpm" sample --device cuda --checkpoint "$ckpt" --sampler ddpm --out "$run/sample_ddpm.png"
step "eval DDIM-50 at n = 1000" 120 "$bin_dir/ddpm" eval --device cuda --checkpoint "$ckpt" --n 1000
step "bench train step (seed model, batch 128)" 120 "$bin_dir/ddpm" bench --device cuda --what train --batch 128 --iters 10
step "bench sampler step (seed model, 64 images)" 60 "$bin_dir/ddpm" bench --device cuda --what sample --batch 64 --iters 20
if [ -f "$run/log.csv" ]; then
  echo
  echo "=== training log: first and last steps (step,epoch,loss,grad_norm,lr,fid)"
  sed -n '2,4p' "$run/log.csv"
  echo "..."
  tail -n 3 "$run/log.csv"
fi
[ "$out" = "$root/runs/gpu-check" ] || cp -r "$run" "$out/" 2>/dev/null
echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "=== all steps passed in $SECONDS s"
else
  printf '=== FAILED: %s\n' "${failed[@]}"
  exit 1
fi
