// selftest.cu: deliberately broken kernels that prove the emulator's checks fire, and emulator-only behaviour
// (tests/emulator.rs). They compile everywhere but are never launched by an op, and a device never loads them.
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

// A barrier missing between thread 0's shared-memory write and the other threads' reads. The default thread order
// runs thread 0 first and hides it (every y is 42); the reversed order runs the readers first, which read the NaN
// fill. Launch: grid 1, block 64, 4 bytes of dynamic shared memory.
extern "C" __global__ void selftest_missing_barrier(float* y) {
  DYN_SHARED(float, s);
  if (threadIdx.x == 0) s[0] = 42.0f;
  y[threadIdx.x] = s[0];
}

// Lane l copies x[4l..4l+3] into slot l of shared memory with cp.async, then, by `mode`: 0 reads its slot before
// cp_async_wait (NaN on the emulator, stale data on the GPU), then waits; 1 waits without committing (the copy
// stays pending: a wait concerns committed groups only); 2 commits but never waits; 3 waits, then reads slot l - 1
// (lane 0 its own) without the __syncthreads() that makes another thread's copy visible: the default thread order
// hides it, the reversed one reads the NaN fill. 1 and 2 end the threads with copies pending, an error.
// Launch: grid 1, block 32, 512 bytes of dynamic shared memory.
extern "C" __global__ void selftest_cp_async_misuse(const float* x, float* y, int mode) {
  DYN_SHARED(float, s);
  const int l = threadIdx.x, from = mode == 3 && l > 0 ? l - 1 : l;
  cp_async_16(s + 4 * l, x + 4 * l, 16);
  if (mode != 1) cp_async_commit();
  if (mode == 3) cp_async_wait<0>();
  for (int j = 0; j < 4; j++) y[4 * l + j] = s[4 * from + j];
  if (mode != 2 && mode != 3) cp_async_wait<0>();
}

// The commit-group semantics, on thread 0: copies of x[0..3] and x[4..7] in two groups, x[8..11] uncommitted;
// cp_async_wait<1>() completes the first group only (y[0..11]: x[0..3] then 8 NaN); after a commit,
// cp_async_wait<0>() completes the rest (y[12..23] = x[0..11]). Launch: grid 1, block 32, 48 bytes of dynamic
// shared memory.
extern "C" __global__ void selftest_cp_async_groups(const float* x, float* y) {
  DYN_SHARED(float, s);
  if (threadIdx.x != 0) return;
  cp_async_16(s, x, 16);
  cp_async_commit();
  cp_async_16(s + 4, x + 4, 16);
  cp_async_commit();
  cp_async_16(s + 8, x + 8, 16);
  cp_async_wait<1>();
  for (int j = 0; j < 12; j++) y[j] = s[j];
  cp_async_commit();
  cp_async_wait<0>();
  for (int j = 0; j < 12; j++) y[12 + j] = s[j];
}

// ldmatrix_x4 with a bad row address by `mode`: 0 one 8 bytes past a 16-byte boundary, 1 one past the end of
// dynamic shared memory. Launch: grid 1, block 32, 512 bytes of dynamic shared memory.
extern "C" __global__ void selftest_bad_ldmatrix(float* y, int mode) {
  DYN_SHARED(bf16, sh);  // NVRTC wants one type per `extern __shared__` name in a file: `s` is a float array
  const bf16* row = sh + 8 * threadIdx.x + (mode == 0 ? 4 : 256);
  unsigned r[4];
  ldmatrix_x4(r, row);
  y[threadIdx.x] = (float)r[0];
}

// mma_bf16_16816 reached by part of a warp: with `half` set only lanes 0-15 call it (the others exit); launched
// with a block of 16 threads, the warp itself is partial. Both are undefined on the GPU and errors here.
// Launch: grid 1, block 32 or 16.
extern "C" __global__ void selftest_partial_warp_mma(float* y, int half) {
  if (half && threadIdx.x >= 16) return;
  const unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float d[4];
  const float c[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  mma_bf16_16816(d, a, b, c);
  y[threadIdx.x] = d[0];
}
