// kernels/common.cuh: helpers shared by every kernel file. Compiled by NVRTC for the GPU and by g++ (with
// emu/shim.h force-included) for the CPU emulator; `static` on helpers keeps the emulator's object files from
// exporting clashing symbols.
#pragma once

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

// Block size of the elementwise and reduction kernels (a multiple of 32; the reductions assume it).
#define BLOCK 256

// Dynamic shared memory. `extern __shared__` does not survive the emulator's `__shared__ -> static thread_local`,
// so there it is a per-block buffer from the runtime, filled with NaN before each block.
#ifdef CUDA_EMU
#define DYN_SHARED(T, name) T* const name = static_cast<T*>(emu_dynamic_smem())
#else
#define DYN_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

// 64-bit integer types without <cstdint>, which NVRTC lacks.
typedef unsigned long long u64;

// Grid-stride loop over [0, n): correct for any grid size, so launches can cap their grid.
#define GRID_STRIDE(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
       i += (long long)blockDim.x * gridDim.x)

// ---- reductions -------------------------------------------------------------------------------------------------
// Sum over the 32 lanes of a warp; every lane gets the total. The butterfly order is fixed, so the result is too.
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a 1-D block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the total.
// `scratch` is 32 floats of shared memory, free again when this returns. Fixed order: warp sums, then the
// warp totals summed by warp 0.
static __device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = warp_sum(lane < nwarps ? scratch[lane] : 0.0f);
  __syncthreads();  // scratch may be reused right after
  return v;
}

// ---- Philox4x32-10 and Box-Muller, exactly as src/rng.rs ------------------------------------------------------
// Element `index` of stream `stream` under `seed`: counter = [index lo, index hi, stream lo, stream hi],
// key = [seed lo, seed hi]. The integer part is bit-exact with the CPU; the normal differs by at most ~2 ulp
// (logf, sqrtf, cosf).
struct uint4_ { unsigned x, y, z, w; };

static __device__ __forceinline__ uint4_ philox4x32_10(uint4_ c, unsigned k0, unsigned k1) {
#pragma unroll
  for (int r = 0; r < 10; r++) {
    if (r > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    const unsigned long long p0 = 0xD2511F53ull * c.x, p1 = 0xCD9E8D57ull * c.z;
    c = uint4_{(unsigned)(p1 >> 32) ^ c.y ^ k0, (unsigned)p1, (unsigned)(p0 >> 32) ^ c.w ^ k1, (unsigned)p0};
  }
  return c;
}

static __device__ __forceinline__ float philox_normal(u64 seed, u64 stream, u64 index) {
  const uint4_ w = philox4x32_10(uint4_{(unsigned)index, (unsigned)(index >> 32), (unsigned)stream,
                                        (unsigned)(stream >> 32)},
                                 (unsigned)seed, (unsigned)(seed >> 32));
  const float two_pow_m24 = 1.0f / 16777216.0f;
  const float u1 = (float)((w.x >> 8) + 1) * two_pow_m24, u2 = (float)(w.y >> 8) * two_pow_m24;
  // 2*pi rounded to f32, as Rust's std::f32::consts::TAU.
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}
