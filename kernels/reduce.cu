// reduce.cu: deterministic global sums in two passes (no float atomics): each block of the first pass writes
// one partial sum, and a single block adds the partials in a fixed order. For a given length and grid the result
// is the same on every run and every GPU. Used by the MSE loss and the global gradient norm.
#include "common.cuh"

// parts[blockIdx.x] = sum over this block's grid-stride share of (x - y)^2 (y may be null: sum of x^2).
// Launch: grid = number of partials (<= 1024, fixed by the caller), block 256.
extern "C" __global__ void __launch_bounds__(256)
sumsq_partials(const float* __restrict__ x, const float* __restrict__ y, float* __restrict__ parts, long long n) {
  __shared__ float scratch[32];
  float s = 0.0f;
  GRID_STRIDE(e, n) { const float d = y ? x[e] - y[e] : x[e]; s += d * d; }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) parts[blockIdx.x] = s;
}

// Sum of the `nparts` partials, by one block in a fixed order. mode 0: out[0] = sum / divisor (a mean).
// mode 1 (gradient clipping, torch.nn.utils.clip_grad_norm_): out[0] = total = sqrt(sum),
// out[1] = min(1, max_norm / (total + 1e-6)). Launch: grid 1, block 1024.
extern "C" __global__ void __launch_bounds__(1024)
finish_sum(const float* __restrict__ parts, int nparts, float* __restrict__ out, int mode, float divisor,
           float max_norm) {
  __shared__ float scratch[32];
  float s = 0.0f;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += parts[i];
  s = block_sum(s, scratch);
  if (threadIdx.x != 0) return;
  if (mode == 0) {
    out[0] = s / divisor;
  } else {
    const float total = sqrtf(s);
    out[0] = total;
    out[1] = fminf(1.0f, max_norm / (total + 1e-6f));
  }
}

// x *= coef[0] when coef[0] < 1 (the clip scale stays on the device: no round trip to the host).
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void scale_by(float* __restrict__ x, const float* __restrict__ coef, long long n) {
  const float c = coef[0];
  if (c >= 1.0f) return;
  GRID_STRIDE(e, n) x[e] *= c;
}
