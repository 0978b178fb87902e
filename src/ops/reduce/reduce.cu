// reduce.cu: sums and copies. Global sums run in two passes (no float atomics): each block of the first pass
// writes one partial sum, and a single block adds the partials in a fixed order, so for a given length and grid the
// result is the same on every run and every GPU (the MSE loss and the global gradient norm). Row sums give the bias
// gradients; channel-block copies make concat and split; add_assign accumulates gradients; fill makes a constant
// buffer on the device.
#include "common.cuh"

// Block `block` of `blocks`'s share of sum (x - y)^2 over n values (y may be null: sum of x^2), summed over a
// grid-stride loop of `blocks` blocks; valid in thread 0.
static __device__ float sumsq_share(const float* __restrict__ x, const float* __restrict__ y, long long n,
                                    long long block, long long blocks, float* scratch) {
  float s = 0.0f;
  for (long long e = block * blockDim.x + threadIdx.x; e < n; e += blockDim.x * blocks) {
    const float d = y ? x[e] - y[e] : x[e];
    s += d * d;
  }
  return block_sum(s, scratch);
}

// The sum of `nparts` partials by one block in a fixed order, written as `mode` says. mode 0: out[0] = sum / divisor
// (a mean). mode 1 (gradient clipping, torch.nn.utils.clip_grad_norm_): out[0] = total = sqrt(sum),
// out[1] = min(1, max_norm / (total + 1e-6)).
static __device__ void finish_parts(const volatile float* parts, int nparts, float* __restrict__ out, int mode,
                                    float divisor, float max_norm, float* scratch) {
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

// After a first-pass block wrote parts[blockIdx.x]: when `ticket` is given (an int that is 0 between launches), the
// last block to finish takes the second pass itself (finish_parts over all gridDim.x partials) and sets the ticket
// back to 0, so that the sum needs no second launch; the order of the sum does not depend on which block is last.
// `last` is one int of the block's shared memory.
static __device__ void finish_if_last(const float* parts, int* ticket, float* out, int mode, float divisor,
                                      float max_norm, float* scratch, int* last) {
  if (!ticket) return;
  // This block's partial is visible device-wide before its ticket is taken.
  if (threadIdx.x == 0) {
    __threadfence();
    last[0] = atomicAdd(ticket, 1) == (int)gridDim.x - 1;
  }
  __syncthreads();
  if (!last[0]) return;
  __threadfence();
  if (threadIdx.x == 0) *ticket = 0;
  finish_parts(parts, gridDim.x, out, mode, divisor, max_norm, scratch);
}

// parts[blockIdx.x] = sum over this block's grid-stride share of (x - y)^2 (y may be null: sum of x^2); with a
// ticket, the last block also finishes the sum (finish_if_last). Launch: grid = number of partials (<= 1024,
// fixed by the caller), block 256.
extern "C" __global__ void __launch_bounds__(256)
sumsq_partials(const float* __restrict__ x, const float* __restrict__ y, float* parts, long long n, int* ticket,
               float* __restrict__ out, int mode, float divisor, float max_norm) {
  __shared__ float scratch[32];
  __shared__ int last[1];
  const float s = sumsq_share(x, y, n, blockIdx.x, gridDim.x, scratch);
  if (threadIdx.x == 0) parts[blockIdx.x] = s;
  finish_if_last(parts, ticket, out, mode, divisor, max_norm, scratch, last);
}

// sumsq_partials over many tensors of one arena in one launch, with the same partials: block b does what block
// table[4b+2] of a sumsq_partials launch of table[4b+3] blocks over the table[4b+1] values from word table[4b] does,
// and writes parts[b]; with a ticket, the last block also finishes the sum. Launch: grid = rows of the table,
// block 256.
extern "C" __global__ void __launch_bounds__(256)
sumsq_segments(const float* __restrict__ x, const int* __restrict__ table, float* parts, int* ticket,
               float* __restrict__ out, int mode, float divisor, float max_norm) {
  __shared__ float scratch[32];
  __shared__ int last[1];
  const int* row = table + 4 * (long long)blockIdx.x;
  const float s = sumsq_share(x + row[0], nullptr, row[1], row[2], row[3], scratch);
  if (threadIdx.x == 0) parts[blockIdx.x] = s;
  finish_if_last(parts, ticket, out, mode, divisor, max_norm, scratch, last);
}

// The second pass alone, for partials made apart (finish_parts). Launch: grid 1, block 1024.
extern "C" __global__ void __launch_bounds__(1024)
finish_sum(const float* __restrict__ parts, int nparts, float* __restrict__ out, int mode, float divisor,
           float max_norm) {
  __shared__ float scratch[32];
  finish_parts(parts, nparts, out, mode, divisor, max_norm, scratch);
}

// x *= coef[0] when coef[0] < 1 (the clip scale stays on the device: no round trip to the host).
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void scale_by(float* __restrict__ x, const float* __restrict__ coef, long long n) {
  const float c = coef[0];
  if (c >= 1.0f) return;
  GRID_STRIDE(e, n) x[e] *= c;
}

// out[r] = sum of row r of x ([rows, len]): per-(image, channel) sums of an [n, C, plane] tensor.
// Launch: grid rows (<= 2^31-1), block 256.
extern "C" __global__ void __launch_bounds__(256) row_sums(const float* __restrict__ x, float* __restrict__ out,
                                                           int len) {
  __shared__ float scratch[32];
  const float* row = x + (long long)blockIdx.x * len;
  float s = 0.0f;
  for (int p = threadIdx.x; p < len; p += blockDim.x) s += row[p];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// out[c] = sum_i parts[i][c] over the n rows of parts [n, C], in row order: reduces per-image partial
// gradients (bias sums) deterministically. Launch: grid CEIL_DIV(C, 256), block 256.
extern "C" __global__ void sum_rows(const float* __restrict__ parts, float* __restrict__ out, int n, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.0f;
  for (int i = 0; i < n; i++) s += parts[(long long)i * C + c];
  out[c] = s;
}

// dst[i][dst_off + c][p] = src[i][src_off + c][p] for c < count, images i < n, p < plane; src has src_c channels
// and dst dst_c (a device copy when all are 1).
extern "C" __global__ void copy_channels(const float* __restrict__ src, int src_c, int src_off,
                                         float* __restrict__ dst, int dst_c, int dst_off, int count, int n,
                                         int plane) {
  GRID_STRIDE(e, (long long)n * count * plane) {
    const int p = e % plane, c = e / plane % count;
    const long long i = e / ((long long)plane * count);
    dst[(i * dst_c + dst_off + c) * plane + p] = src[(i * src_c + src_off + c) * plane + p];
  }
}

// The channel concat cat = [a, b] of a: [n, CA, plane] and b: [n, CB, plane] into cat: [n, CA + CB, plane]. When
// cat_nhwc is given, cat is also written as bf16 [n, plane, CP] (channels-last, CP = CA + CB rounded up to 8, the
// padding 0, written by each pixel's last channel): the operand of the conv that reads it.
// Launch: grid-stride over n * (CA + CB) * plane.
extern "C" __global__ void concat_channels(const float* __restrict__ a, const float* __restrict__ b,
                                           float* __restrict__ cat, bf16* __restrict__ cat_nhwc, int CA, int CB,
                                           int n, int plane) {
  const int C = CA + CB;
  GRID_STRIDE(e, (long long)n * C * plane) {
    const int p = e % plane, c = e / plane % C;
    const long long i = e / ((long long)plane * C);
    const float v = c < CA ? a[(i * CA + c) * plane + p] : b[(i * CB + c - CA) * plane + p];
    cat[e] = v;
    if (cat_nhwc) write_nhwc(cat_nhwc, e, C, plane, v);
  }
}

// The inverse: a and b written from cat, one block per (channel of cat, image). For a part whose *_nhwc is given,
// its values also as bf16 [n, plane, padded count] (channels-last, the count rounded up to 8, the padding 0, written
// by the part's last channel's block) with its per-image channel sums [n, count] into *_sums: the operand of the
// conv backward that reads that part (a gradient) and the terms of its bias gradient.
// Launch: grid (CA + CB, n), block 256.
extern "C" __global__ void __launch_bounds__(256)
split_channels(const float* __restrict__ cat, float* __restrict__ a, float* __restrict__ b,
               bf16* __restrict__ a_nhwc, float* __restrict__ a_sums, bf16* __restrict__ b_nhwc,
               float* __restrict__ b_sums, int CA, int CB, int plane) {
  __shared__ float scratch[32];
  const int i = blockIdx.y, C = CA + CB, in_a = (int)blockIdx.x < CA;
  // This block's part, its channel count and its channel there.
  const int count = in_a ? CA : CB, c = in_a ? (int)blockIdx.x : (int)blockIdx.x - CA;
  float* dst = (in_a ? a : b) + ((long long)i * count + c) * plane;
  bf16* nhwc = in_a ? a_nhwc : b_nhwc;
  float* sums = in_a ? a_sums : b_sums;
  const float* src = cat + ((long long)i * C + blockIdx.x) * plane;
  float s = 0.0f;
  for (int p = threadIdx.x; p < plane; p += blockDim.x) {
    const float v = src[p];
    dst[p] = v;
    s += v;
    if (nhwc) write_nhwc(nhwc, ((long long)i * count + c) * plane + p, count, plane, v);
  }
  if (!nhwc) return;
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) sums[(long long)i * count + c] = s;
}

// acc += g (gradient accumulation; one rounding per element, as the CPU's `+=`).
extern "C" __global__ void add_assign(float* __restrict__ acc, const float* __restrict__ g, long long n) {
  GRID_STRIDE(e, n) acc[e] += g[e];
}

// x[e] = v: a constant buffer made on the device instead of uploaded (e.g. the loss's seed gradient dL/dL = 1).
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void fill(float* __restrict__ x, long long n, float v) {
  GRID_STRIDE(e, n) x[e] = v;
}
