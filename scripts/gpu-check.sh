#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run the prebuilt binaries on the real device and print
# everything docs/gpu-runs.md records. Nothing is compiled on the GPU machine (it may have no Rust toolchain).
#
# Here, on the build machine (NVRTC installed, so the kernels are embedded as PTX and the GPU needs no NVRTC):
#   export LD_LIBRARY_PATH="$(scripts/install-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
#   scripts/gpu-check.sh --prepare     # cargo build + cargo test --no-run, copies the binaries into .gpu/
# Then on the GPU machine, from the repository root with .gpu/ carried along:
#   scripts/gpu-check.sh               # every step has its own time limit, and all together stop at 8 minutes
#   scripts/gpu-check.sh --convs       # only the conv group (below): about 2 minutes
# Before spending GPU time, the same steps here on the CPU emulator at tiny sizes (PyTorch on the CPU), so that a
# typo or a missing file shows up here:
#   scripts/gpu-check.sh --emu [--convs]
# Output goes to stdout and to $OUT/gpu-check.log ($OUT, when set, is what the device runner brings back; the run
# folder with its sample grids is copied there too), else to runs/gpu-check/.
#
# Steps: ddpm info; the tensor-core layout tests (tests/tensor_core_layout.rs: mma.sync, ldmatrix and cp.async
# against the PTX ISA's layouts); the kernel tests (each op family's tests.rs, in the library's unit-test binary) and the model
# tests (tests/emu_model.rs) on the device (their `--ignored` CUDA variants) and the classifier's; one epoch of the reference's recipe (with its FID at the end);
# DDPM and DDIM-50 sampling from its checkpoint; `ddpm eval` of DDIM-50 at n = 1000; `ddpm bench` sampler-step times.
# The conv group: every conv shape of the UNet timed alone (`ddpm bench --what convs`, bf16 and fp32), the same
# shapes in PyTorch (pytorch/conv_bench.py, cuDNN), the two side by side (scripts/compare_convs.py, also written to
# $OUT/convs-compare.md), train-step times in bf16 and fp32, and the cost model's predictions for the training
# and sampler steps ($OUT/predicted.jsonl). A failing step is reported and the others still
# run; a step that would start past the overall budget is skipped and counted as failed; the exit status is
# non-zero if any failed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin_dir="$root/.gpu"

emu=false
only_convs=false
for arg in "$@"; do
  case "$arg" in
    --prepare) ;;
    --emu) emu=true ;;
    --convs) only_convs=true ;;
    *) echo "usage: scripts/gpu-check.sh [--prepare | [--emu] [--convs]]; unknown argument: $arg" >&2; exit 2 ;;
  esac
done

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
  # The release profile's debug info makes the five binaries about 140 MB; without it (symbols kept, so panics
  # still name their functions) about 21 MB, within what the device runner carries (64 MiB).
  if command -v strip > /dev/null; then
    for f in ddpm lib_tests emu_model classifier tensor_core_layout; do strip --strip-debug "$bin_dir/$f"; done
  else
    echo "warning: no strip: $bin_dir keeps its debug info ($(du -sh "$bin_dir" | cut -f1))" >&2
  fi
  git rev-parse HEAD > "$bin_dir/COMMIT"
  if echo "$listing" | grep -q "libnvrtc not found"; then
    echo "warning: built without NVRTC: the GPU machine will need libnvrtc to compile the kernels at run time" >&2
  fi
  echo "prepared $bin_dir ($(du -sh "$bin_dir" | cut -f1)): $(ls "$bin_dir" | tr '\n' ' ')(commit $(cat "$bin_dir/COMMIT"))"
  exit 0
fi

for f in ddpm lib_tests emu_model classifier tensor_core_layout COMMIT; do
  [ -e "$bin_dir/$f" ] || { echo "missing $bin_dir/$f: run scripts/gpu-check.sh --prepare on the build machine first" >&2; exit 2; }
done
[ -f pytorch/conv_bench.py ] && [ -f scripts/compare_convs.py ] || { echo "missing pytorch/conv_bench.py or scripts/compare_convs.py: run from a full checkout" >&2; exit 2; }
python="${PYTHON:-python3}"
if $emu; then
  # The same steps on the CPU emulator at tiny sizes: the test binaries' emulator variants (filtered to a few
  # tests: the whole suites are CI's job), a model of width 8 on a few steps, PyTorch on the CPU. The numbers mean
  # nothing; the point is that every command, path and file format works before a GPU run.
  dev=emu
  torch_dev=cpu
  layout_args=(::emu)
  kernel_args=(::emu)
  model_args=(::emu --nocapture)
  classifier_args=(emu)
  budget=3600
  scale=10
  out="${OUT:-$root/runs/gpu-check-emu}"
  run="$root/runs/gpu-check-emu/reference-epoch1"
  tiny=(--base 8 --t-dim 4)
  # T = 10: the grids' and the FID check's DDIM-50 become DDIM-10, DDPM 10 steps.
  train_size=(--batch 8 --max-steps 3 --timesteps 10 --sample-n 4 --eval-n 16)
  convs_size=(--batch 2 --base 8 --iters 1)
  train_bench=(--batch 2 --base 8 --t-dim 4 --iters 1)
  sample_bench=(--batch 2 --base 8 --t-dim 4 --iters 1)
  sample_n=(--n 4)
  ddim_steps=5
  eval_n=16
else
  dev=cuda
  torch_dev=cuda
  layout_args=(--ignored)
  kernel_args=(--ignored ::cuda)
  model_args=(--ignored --nocapture)
  classifier_args=(--ignored)
  # Every step below together stops within 8 minutes (each step's limit is cut to what is left of this).
  budget=470
  scale=1
  out="${OUT:-$root/runs/gpu-check}"
  run="$root/runs/gpu-check/reference-epoch1"
  tiny=()
  train_size=()
  convs_size=(--batch 128 --base 64 --iters 20)
  train_bench=(--batch 128 --iters 10)
  sample_bench=(--batch 64 --iters 20)
  sample_n=()
  ddim_steps=50
  eval_n=1000
fi
mkdir -p "$out" "$(dirname "$run")"
rm -rf "$run"
log="$out/gpu-check.log"
exec > >(tee "$log") 2>&1
# The test binaries read tests/golden under the crate root; it is here, not where they were built.
export CARGO_MANIFEST_DIR="$root"
failed=()
deadline=$((SECONDS + budget))

# [step_out=FILE] step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under a time limit (LIMIT_SECONDS on a GPU, times
# $scale on the emulator, cut to what is left of the budget) and prints its wall time and status; with step_out
# set, COMMAND's stdout is also appended to FILE. A test binary that ran no test (a filter matching nothing) fails.
step() {
  local name=$1 limit=$(($2 * scale))
  shift 2
  echo
  local left=$((deadline - SECONDS))
  if [ $left -lt 15 ]; then
    echo "=== $name: skipped, ${left} s left of the ${budget} s budget"
    failed+=("$name (skipped: out of time)")
    return
  fi
  [ $limit -le $left ] || limit=$left
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS rc captured
  captured=$(mktemp)
  timeout "$limit" "$@" | tee "$captured"
  rc=${PIPESTATUS[0]}
  [ -z "${step_out:-}" ] || cat "$captured" >> "$step_out"
  if [ $rc -eq 0 ] && grep -q '^running 0 tests' "$captured"; then
    echo "=== $name: no test matched the filter"
    rc=1
  fi
  rm -f "$captured"
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ $rc -eq 0 ] || failed+=("$name (exit $rc)")
}

echo "# GPU check$($emu && echo ' (on the CPU emulator, tiny sizes)'), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cat "$bin_dir/COMMIT")"
if $emu; then
  echo "(--emu: no GPU used)"
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "(nvidia-smi not available)"
fi
step "ddpm info" 60 "$bin_dir/ddpm" info
if ! $emu && ! "$bin_dir/ddpm" info 2>/dev/null | grep -q "(--device auto) run on CUDA"; then
  echo "=== no usable CUDA device (see ddpm info above): nothing else to check here"
  exit 1
fi
step "tensor-core layout tests on $dev" 60 "$bin_dir/tensor_core_layout" "${layout_args[@]}"

# The conv group: ours and PyTorch's per conv shape, then the two side by side.
ours="$out/convs-ours.jsonl"
theirs="$out/convs-torch.jsonl"
compared="$out/convs-compare.md"
rm -f "$ours" "$theirs" "$compared"
for p in bf16 fp32; do
  step_out=$ours step "bench convs ($p)" 60 "$bin_dir/ddpm" bench --what convs --device "$dev" --precision "$p" --json "${convs_size[@]}"
done
for p in bf16 fp32; do
  step_out=$theirs step "PyTorch convs ($p, $torch_dev)" 120 "$python" pytorch/conv_bench.py --device "$torch_dev" --precision "$p" "${convs_size[@]}"
done
step_out=$compared step "compare convs" 30 "$python" scripts/compare_convs.py "$ours" "$theirs"
for p in bf16 fp32; do
  step "bench train step ($p)" 60 "$bin_dir/ddpm" bench --device "$dev" --precision "$p" --what train "${train_bench[@]}"
done
# What the cost model (docs/gpu-model.md) predicts for the same steps, to set beside the times above.
predicted="$out/predicted.jsonl"
rm -f "$predicted"
step_out=$predicted step "predicted train step (h200 model)" 30 "$bin_dir/ddpm" bench --what train --model h200 --json "${train_bench[@]}"
step_out=$predicted step "predicted sampler step (h200 model)" 30 "$bin_dir/ddpm" bench --what sample --model h200 --json "${sample_bench[@]}"

if ! $only_convs; then
  step "kernel tests on $dev" 120 "$bin_dir/lib_tests" "${kernel_args[@]}"
  step "model tests on $dev" 120 "$bin_dir/emu_model" "${model_args[@]}"
  step "classifier tests on $dev" 60 "$bin_dir/classifier" "${classifier_args[@]}"
  step "train: one epoch of the reference recipe" 300 "$bin_dir/ddpm" train --device "$dev" --recipe reference --epochs 1 "${tiny[@]}" "${train_size[@]}" --out "$run"
  ckpt="$run/checkpoint.safetensors"
  step "sample DDIM-$ddim_steps" 60 "$bin_dir/ddpm" sample --device "$dev" --checkpoint "$ckpt" --sampler ddim --steps "$ddim_steps" "${sample_n[@]}" --out "$run/sample_ddim$ddim_steps.png"
  step "sample DDPM" 120 "$bin_dir/ddpm" sample --device "$dev" --checkpoint "$ckpt" --sampler ddpm "${sample_n[@]}" --out "$run/sample_ddpm.png"
  step "eval DDIM-$ddim_steps at n = $eval_n" 120 "$bin_dir/ddpm" eval --device "$dev" --checkpoint "$ckpt" --steps "$ddim_steps" --n "$eval_n"
  step "bench sampler step" 60 "$bin_dir/ddpm" bench --device "$dev" --what sample "${sample_bench[@]}"
  if [ -f "$run/log.csv" ]; then
    echo
    echo "=== training log: first and last steps (step,epoch,loss,grad_norm,lr,fid)"
    sed -n '2,4p' "$run/log.csv"
    echo "..."
    tail -n 3 "$run/log.csv"
  fi
  [ "$out" = "$(dirname "$run")" ] || cp -r "$run" "$out/" 2>/dev/null
fi
echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "=== all steps passed in $SECONDS s"
else
  printf '=== FAILED: %s\n' "${failed[@]}"
  exit 1
fi
