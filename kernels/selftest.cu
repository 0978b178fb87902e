// selftest.cu: deliberately broken kernels that prove the emulator's checks fire (tests/gpu_kernels.rs,
// `emulator_reports_*`). They compile everywhere, like every kernel, but are never launched by an op.
#include "common.cuh"

// Half of the block waits at one __syncthreads(), the other half at another: undefined on the GPU, a
// "divergent __syncthreads()" error naming both lines on the emulator. Launch: grid 1, block 64.
extern "C" __global__ void selftest_divergent_barrier(float* y) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  y[threadIdx.x] = 1.0f;
}

// Warp 0 waits in a full-warp shuffle that lane 31 never joins, while the rest wait at a block barrier: a hang on
// the GPU, a "deadlock" error listing where the threads wait on the emulator. Launch: grid 1, block 64.
extern "C" __global__ void selftest_deadlock(float* y) {
  float v = threadIdx.x;
  if (threadIdx.x < 31) v = warp_sum(v);
  __syncthreads();
  y[threadIdx.x] = v;
}

// Reads dynamic shared memory nobody wrote: NaN on the emulator, whatever was there on the GPU.
// Launch: grid 1, block 32, 128 bytes of dynamic shared memory. Opts in to 64 KiB of it, so that the tests can
// check that an opt-in raises the limit (and that the 48 KiB default holds for the kernels without one).
// max-dynamic-shared: 65536
extern "C" __global__ void selftest_unwritten_smem(float* y) {
  DYN_SHARED(float, s);
  y[threadIdx.x] = s[threadIdx.x];
}
