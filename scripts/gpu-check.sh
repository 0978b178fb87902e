#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, run the prebuilt binaries on the real device and print
# everything docs/gpu-runs.md records. Nothing is compiled on the GPU machine (it may have no Rust toolchain).
#
# Here, on the build machine (NVRTC installed, so the kernels are embedded as PTX and the GPU needs no NVRTC):
#   export LD_LIBRARY_PATH="$(scripts/install-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
#   scripts/gpu-check.sh --prepare     # cargo build + cargo test --no-run, copies the binaries into .gpu/
# Then on the GPU machine, from the repository root with .gpu/ carried along:
#   scripts/gpu-check.sh               # every step has its own time limit, and all together stop at 8 minutes
#   scripts/gpu-check.sh --convs       # only the conv group (below): about 2 minutes, plus PyTorch's step bench
#                                      # (up to 3 more: torch.compile compiles the training and the sampler step)
# Before spending GPU time, the same steps here on the CPU emulator at tiny sizes (PyTorch on the CPU), so that a
# typo or a missing file shows up here:
#   scripts/gpu-check.sh --emu [--convs]
# Output goes to stdout and to $OUT/gpu-check.log ($OUT, when set, is what the device runner brings back; the run
# folder with its sample grids is copied there too), else to runs/gpu-check/.
#
# Steps: ddpm info; the tensor-core layout tests (tests/tensor_core_layout.rs: mma.sync, ldmatrix and cp.async
# against the PTX ISA's layouts); the conv group (below); the kernel tests (each op family's tests.rs, in the
# library's unit-test binary) and the model tests (tests/emu_model.rs) on the device (their `--ignored` CUDA
# variants) and the classifier's; the graph tests (tests/graphs.rs: training with its steps captured and replayed
# as CUDA graphs against the same run launch by launch, bit for bit); one epoch of the reference's recipe (with its FID at the end), then the 30 epochs
# of the recipe projected from its log.csv's wall-clock column; DDPM and DDIM-50 sampling from its checkpoint;
# `ddpm eval` of DDIM-50 at n = 1000; last, compute-sanitizer's memcheck and
# racecheck over a few conv and GroupNorm kernel tests (not run, and said so, under --emu or where there is no
# compute-sanitizer: then they count neither as passed nor as failed).
# The conv group: every conv shape of the UNet timed alone (`ddpm bench --what convs`, bf16 and fp32), the same
# shapes in PyTorch (pytorch/conv_bench.py, cuDNN), the two side by side (scripts/compare_convs.py, also written to
# $OUT/convs-compare.md), train-step times in bf16 (graph replays, and launch by launch) and fp32 and the DDIM step's at n = 64 in bf16
# ($OUT/steps-ours.jsonl), the cost model's predictions for the training and sampler steps ($OUT/predicted.jsonl),
# the same steps in PyTorch, eager (bf16 autocast, channels_last, cuDNN autotuning) and torch.compile'd
# (pytorch/step_bench.py, $OUT/steps-torch.jsonl), and the three side by side with our goals (scripts/compare_steps.py,
# $OUT/steps-compare.md). A failing step is reported and the others still run; a step that would start past the
# overall budget is skipped and counted as failed; the exit status is non-zero if any failed.
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
  listing=$(cargo test --release --no-run --lib --test emu_model --test classifier --test tensor_core_layout --test graphs 2>&1)
  mkdir -p "$bin_dir"
  for t in lib_tests emu_model classifier tensor_core_layout graphs; do
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
    for f in ddpm lib_tests emu_model classifier tensor_core_layout graphs; do strip --strip-debug "$bin_dir/$f"; done
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

for f in ddpm lib_tests emu_model classifier tensor_core_layout graphs COMMIT; do
  [ -e "$bin_dir/$f" ] || { echo "missing $bin_dir/$f: run scripts/gpu-check.sh --prepare on the build machine first" >&2; exit 2; }
done
for f in pytorch/conv_bench.py pytorch/step_bench.py scripts/compare_convs.py scripts/compare_steps.py; do
  [ -f "$f" ] || { echo "missing $f: run from a full checkout" >&2; exit 2; }
done
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
  graphs_args=(::emu)
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
  # PyTorch's steps on the CPU in fp32, eager only: torch.compile's CPU compilation of the training step would take
  # minutes of this run's 2 cores and proves nothing about the GPU's.
  steps_torch=(--batch 2 --n 2 --base 8 --t-dim 4 --iters 1 --warmup 1 --modes eager)
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
  graphs_args=(--ignored)
  # Every step below together stops within 8 minutes (each step's limit is cut to what is left of this). Expected:
  # the conv group about 2 minutes plus 1 to 3 for PyTorch's steps (torch.compile's two compilations), the kernel,
  # model and classifier tests, the epoch, sampling and eval about 3; the two compute-sanitizer runs (90 s limit
  # each) come last, so that they are what a slow run skips (counted as failed, with the reason).
  budget=470
  scale=1
  out="${OUT:-$root/runs/gpu-check}"
  run="$root/runs/gpu-check/reference-epoch1"
  tiny=()
  train_size=()
  convs_size=(--batch 128 --base 64 --iters 20)
  train_bench=(--batch 128 --iters 10)
  sample_bench=(--batch 64 --iters 20)
  steps_torch=(--batch 128 --n 64 --iters 20 --modes eager,compile)
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
not_run=()
deadline=$((SECONDS + budget))

# The training step's projection to the recipe's 30 epochs (468 steps of batch 128 each: MNIST's 60000 images),
# from its log.csv (step,epoch,loss,grad_norm,lr,unix_time,fid). A GPU run reads the losses back, and so writes its
# rows, every 32 steps: rows of one read share a time, which is that of the group's last step. The rate is taken
# between the first and the last group of rows without a FID (the row with one also waited for the end-of-epoch
# grids and FID); with one group only (the emulator's few steps), from the start of the train command, start-up
# included.
projection='
NR == 1 { next }
$7 == "" && $6 != "" {
  if ($6 != t) { groups++; if (groups == 1) t0 = $6 }
  t = $6; s = $1
  if (groups == 1) s0 = $1
}
$6 != "" { tend = $6 }
END {
  if (groups >= 2) {
    rate = (t - t0) / (s - s0)
    how = sprintf("steps %d to %d: %d steps in %.1f s", s0, s, s - s0, t - t0)
  } else if (s > 0 && start > 0) {
    rate = (t - start) / s
    how = sprintf("one group of rows: %d steps in %.1f s since the train command started, start-up included", s, t - start)
  } else {
    print "no training row with a time in log.csv: nothing to project"
    exit 1
  }
  after = tend - t
  printf "%.2f ms a step (%s)\n", 1000 * rate, how
  printf "projected 30 epochs (30 x 468 steps of batch 128): %.1f min of training steps", 30 * 468 * rate / 60
  printf "; %.1f min with this run'"'"'s %.1f s after its last step (grids, FID) repeated each epoch\n", (30 * 468 * rate + 30 * after) / 60, after
}'

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
# Whole steps: ours (training in bf16 and fp32, the sampler step in bf16), the cost model's prediction, PyTorch's.
steps_ours="$out/steps-ours.jsonl"
steps_theirs="$out/steps-torch.jsonl"
steps_compared="$out/steps-compare.md"
rm -f "$steps_ours" "$steps_theirs" "$steps_compared"
for p in bf16 fp32; do
  step_out=$steps_ours step "bench train step ($p)" 60 "$bin_dir/ddpm" bench --device "$dev" --precision "$p" --what train --json "${train_bench[@]}"
done
step_out=$steps_ours step "bench train step (bf16, no graphs)" 60 "$bin_dir/ddpm" bench --device "$dev" --precision bf16 --what train --no-graphs --json "${train_bench[@]}"
step_out=$steps_ours step "bench sampler step (bf16)" 60 "$bin_dir/ddpm" bench --device "$dev" --precision bf16 --what sample --json "${sample_bench[@]}"
step_out=$steps_ours step "bench sampler step (bf16, no graphs)" 60 "$bin_dir/ddpm" bench --device "$dev" --precision bf16 --what sample --no-graphs --json "${sample_bench[@]}"
# What the cost model (docs/gpu-model.md) predicts for the same steps, to set beside the times above.
predicted="$out/predicted.jsonl"
rm -f "$predicted"
step_out=$predicted step "predicted train step (h200 model)" 30 "$bin_dir/ddpm" bench --what train --model h200 --json "${train_bench[@]}"
step_out=$predicted step "predicted train step (h200 model, no graphs)" 30 "$bin_dir/ddpm" bench --what train --model h200 --no-graphs --json "${train_bench[@]}"
step_out=$predicted step "predicted sampler step (h200 model)" 30 "$bin_dir/ddpm" bench --what sample --model h200 --json "${sample_bench[@]}"
step_out=$predicted step "predicted sampler step (h200 model, no graphs)" 30 "$bin_dir/ddpm" bench --what sample --model h200 --no-graphs --json "${sample_bench[@]}"
# PyTorch's eager lines come first, so a compilation cut short by the limit still leaves them in the file.
step_out=$steps_theirs step "PyTorch steps ($torch_dev)" 180 "$python" pytorch/step_bench.py --device "$torch_dev" "${steps_torch[@]}"
step_out=$steps_compared step "compare steps" 30 "$python" scripts/compare_steps.py "$steps_ours" "$steps_theirs" "$predicted"

if ! $only_convs; then
  step "kernel tests on $dev" 120 "$bin_dir/lib_tests" "${kernel_args[@]}"
  step "model tests on $dev" 120 "$bin_dir/emu_model" "${model_args[@]}"
  step "classifier tests on $dev" 60 "$bin_dir/classifier" "${classifier_args[@]}"
  step "graph tests on $dev (training and samplers graphed and launch by launch, bit for bit)" 90 "$bin_dir/graphs" "${graphs_args[@]}"
  train_start=$(date +%s.%N)
  step "train: one epoch of the reference recipe" 300 "$bin_dir/ddpm" train --device "$dev" --recipe reference --epochs 1 "${tiny[@]}" "${train_size[@]}" --out "$run"
  if [ -f "$run/log.csv" ]; then
    step "projected 30-epoch time (from log.csv)" 10 awk -F, -v start="$train_start" -f <(printf '%s' "$projection") "$run/log.csv"
  else
    echo
    echo "=== projected 30-epoch time: NOT computed: the training step wrote no $run/log.csv"
  fi
  ckpt="$run/checkpoint.safetensors"
  step "sample DDIM-$ddim_steps" 60 "$bin_dir/ddpm" sample --device "$dev" --checkpoint "$ckpt" --sampler ddim --steps "$ddim_steps" "${sample_n[@]}" --out "$run/sample_ddim$ddim_steps.png"
  step "sample DDPM" 120 "$bin_dir/ddpm" sample --device "$dev" --checkpoint "$ckpt" --sampler ddpm "${sample_n[@]}" --out "$run/sample_ddpm.png"
  step "eval DDIM-$ddim_steps at n = $eval_n" 120 "$bin_dir/ddpm" eval --device "$dev" --checkpoint "$ckpt" --steps "$ddim_steps" --n "$eval_n"
  if [ -f "$run/log.csv" ]; then
    echo
    echo "=== training log: first and last steps (step,epoch,loss,grad_norm,lr,unix_time,fid)"
    sed -n '2,4p' "$run/log.csv"
    echo "..."
    tail -n 3 "$run/log.csv"
  fi
  [ "$out" = "$(dirname "$run")" ] || cp -r "$run" "$out/" 2>/dev/null

  # compute-sanitizer over a few kernel tests, last (the first steps to go when time runs short): memcheck (out of
  # bounds and misaligned accesses, uninitialised device memory read back) and racecheck (shared-memory hazards:
  # the tensor-core conv's cp.async tiles, the block reductions). The tests have small shapes, so that each tool's
  # run stays well under its limit despite the sanitizer's slowdown; norm_conv2d_equals_unfused in bf16 takes the
  # tensor-core conv path, conv2d_bf16 (memcheck only) each of the UNet's conv shapes at batch 2.
  san_tests=(ops::conv::tests::conv2d::cuda ops::conv::tests::conv_transpose2d::cuda
    ops::conv::tests::norm_conv2d_equals_unfused::cuda ops::norm::tests::group_norm::cuda
    ops::norm::tests::group_norm_backward_accumulates::cuda)
  # The filter must select every one of these tests: a renamed test would otherwise drop out silently.
  echo
  selected=$("$bin_dir/lib_tests" --list --ignored --exact "${san_tests[@]}" ops::conv::tests::conv2d_bf16::cuda 2>/dev/null | grep -c ': test$')
  echo "=== compute-sanitizer's tests: $selected of $((${#san_tests[@]} + 1)) selected by the filter"
  [ "$selected" -eq $((${#san_tests[@]} + 1)) ] || failed+=("compute-sanitizer's test filter (selects $selected of $((${#san_tests[@]} + 1)))")
  sanitizer=$(command -v compute-sanitizer || true)
  [ -n "$sanitizer" ] || [ ! -x /usr/local/cuda/bin/compute-sanitizer ] || sanitizer=/usr/local/cuda/bin/compute-sanitizer
  for tool in memcheck racecheck; do
    tests=("${san_tests[@]}")
    [ $tool = racecheck ] || tests+=(ops::conv::tests::conv2d_bf16::cuda)
    if $emu || [ -z "$sanitizer" ]; then
      why="--emu: there is no GPU to sanitize"
      $emu || why="no compute-sanitizer on PATH nor in /usr/local/cuda/bin"
      echo
      echo "=== compute-sanitizer $tool: NOT run ($why); it counts neither as passed nor as failed"
      echo "    (on a GPU: compute-sanitizer --tool $tool --error-exitcode 1 --print-limit 20 $bin_dir/lib_tests --ignored --exact --test-threads 1 ${tests[*]})"
      not_run+=("compute-sanitizer $tool ($why)")
      continue
    fi
    step "compute-sanitizer $tool" 90 "$sanitizer" --tool $tool --error-exitcode 1 --print-limit 20 "$bin_dir/lib_tests" --ignored --exact --test-threads 1 "${tests[@]}"
  done
fi
echo
[ ${#not_run[@]} -eq 0 ] || printf '=== NOT run: %s\n' "${not_run[@]}"
if [ ${#failed[@]} -eq 0 ]; then
  echo "=== all steps $([ ${#not_run[@]} -eq 0 ] || echo 'that ran ')passed in $SECONDS s"
else
  printf '=== FAILED: %s\n' "${failed[@]}"
  exit 1
fi
