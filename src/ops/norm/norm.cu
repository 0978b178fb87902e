// norm.cu: GroupNorm (optionally fused with SiLU), forward and backward, as src/cpu/norm.rs.
// One block per (group g, image i): the group's M = (C/G)*plane values are contiguous in NCHW.
// When the launch gives a block dynamic shared memory for the group (`stage`), its values are read from device
// memory once, into shared memory, and every later pass reads them there; otherwise each pass reads them again.
// Both orders of arithmetic are the same, so staged and unstaged launches give the same bits.
#include "common.cuh"

// y = z or silu(z), z = (x - mean)*rstd*gamma[c] + beta[c]; saves mean and rstd per (i, g) for the backward.
// Two passes over the group (mean, then the centred variance) for accuracy. When `yb` is not null, y is not
// written: the values go to yb as bf16 channels-last [n, plane, C] (C % 8 == 0), the operand of the conv that
// reads them (conv_gather_mma), rounded as nchw_to_nhwc_bf16 rounds y, so that the conv's operand is made without
// writing y and converting it. With `stage`, the group's M values are kept in M floats of dynamic shared memory.
// Launch: grid (G, n), block 256.
// max-dynamic-shared: 65536
extern "C" __global__ void __launch_bounds__(256)
group_norm_fwd(const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
               float* __restrict__ y, bf16* __restrict__ yb, float* __restrict__ mean_out,
               float* __restrict__ rstd_out, int C, int plane, int G, float eps, int silu, int stage) {
  __shared__ float scratch[32];
  float* staged = nullptr;  // only a staging launch has dynamic shared memory
  if (stage) {
    DYN_SHARED(float, smem);
    staged = smem;
  }
  const int g = blockIdx.x, i = blockIdx.y, cpg = C / G, M = cpg * plane;
  const long long base = ((long long)i * C + (long long)g * cpg) * plane;
  float s = 0.0f;
  for (int e = threadIdx.x; e < M; e += blockDim.x) {
    const float v = x[base + e];
    if (stage) staged[e] = v;
    s += v;
  }
  // The group's values for the later passes; block_sum's barriers make the staged ones visible to every thread.
  const float* xg = stage ? staged : x + base;
  const float mean = block_sum(s, scratch) / M;
  float q = 0.0f;
  for (int e = threadIdx.x; e < M; e += blockDim.x) { const float d = xg[e] - mean; q += d * d; }
  const float rstd = 1.0f / sqrtf(block_sum(q, scratch) / M + eps);
  if (yb) {
    // Thread p reads pixel p of each of the group's channels (coalesced across threads) and writes them as the
    // group's cpg contiguous channels of that pixel.
    bf16* out = yb + (long long)i * plane * C + g * cpg;
    for (int p = threadIdx.x; p < plane; p += blockDim.x) {
      for (int j = 0; j < cpg; j++) {
        const int c = g * cpg + j;
        const float z = (xg[(long long)j * plane + p] - mean) * rstd * gamma[c] + beta[c];
        out[(long long)p * C + j] = f32_to_bf16(silu ? z * sigmoidf_(z) : z);
      }
    }
  } else {
    for (int e = threadIdx.x; e < M; e += blockDim.x) {
      const int c = g * cpg + e / plane;
      const float z = (xg[e] - mean) * rstd * gamma[c] + beta[c];
      y[base + e] = silu ? z * sigmoidf_(z) : z;
    }
  }
  if (threadIdx.x == 0) { mean_out[i * G + g] = mean; rstd_out[i * G + g] = rstd; }
}

// With gz = gy * silu'(z) (or gy): per channel c of image i, dgamma_part[i][c] = sum gz*xhat and
// dbeta_part[i][c] = sum gz; the last block to finish them (counted on `ticket`, an int that is 0 between
// launches and that block sets back to 0) adds them over the images, in image order, into dgamma and dbeta, so the
// result does not depend on which block is last. When dx is not null,
// dx = rstd*(gz*gamma - mean(gz*gamma) - xhat*mean(gz*gamma*xhat)) over the group; added to dx when accumulate
// (x's gradient from its other readers: one pass instead of a separate add). When dxb is not null, the values dx
// ends up holding are also written as bf16 channels-last [n, plane, C] (C % 8 == 0), the operand of the conv
// backward that reads this gradient, rounded as nchw_to_nhwc_bf16 rounds them; when dx_sums is not null, their
// per-image channel sums [n, C] (what that conv's bias gradients are sums of), and when dx_sums_b is not null, those
// sums as bf16 too, at dx_sums_b[i * sums_stride + c] (a [n, C] operand, or columns of a wider one: the time
// projections' gradient, when that conv's channel bias is its columns), and when dx_sums_f is not null, as f32 at
// the same place in the wider gradient itself. With `stage`, the group's x and gy are kept in 2M floats of dynamic
// shared memory for the dx pass. Launch: grid (G, n), block 256.
// max-dynamic-shared: 65536
extern "C" __global__ void __launch_bounds__(256)
group_norm_bwd(const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
               const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ gy,
               float* __restrict__ dx, float* dgamma_part, float* dbeta_part, float* __restrict__ dgamma,
               float* __restrict__ dbeta, int* ticket, bf16* __restrict__ dxb, float* __restrict__ dx_sums,
               bf16* __restrict__ dx_sums_b, float* __restrict__ dx_sums_f, int sums_stride, int C, int plane, int G,
               int silu, int accumulate, int stage) {
  __shared__ float scratch[32];
  __shared__ int last[1];
  float* staged = nullptr;  // only a staging launch has dynamic shared memory
  if (stage) {
    DYN_SHARED(float, smem);
    staged = smem;
  }
  const int g = blockIdx.x, i = blockIdx.y, cpg = C / G, M = cpg * plane;
  const long long base = ((long long)i * C + (long long)g * cpg) * plane;
  const float m = mean[i * G + g], r = rstd[i * G + g];
  float s1 = 0.0f, s2 = 0.0f;  // sum gz*gamma and sum gz*gamma*xhat over the group
  for (int j = 0; j < cpg; j++) {
    const int c = g * cpg + j;
    const float ga = gamma[c], be = beta[c];
    const float* xc = x + base + (long long)j * plane;
    const float* gc = gy + base + (long long)j * plane;
    float dg = 0.0f, db = 0.0f;
    for (int p = threadIdx.x; p < plane; p += blockDim.x) {
      const float xv = xc[p], gv = gc[p];
      if (stage) {
        staged[j * plane + p] = xv;
        staged[M + j * plane + p] = gv;
      }
      const float xh = (xv - m) * r;
      float gz = gv;
      if (silu) {
        const float z = xh * ga + be, sg = sigmoidf_(z);
        gz *= sg * (1.0f + z * (1.0f - sg));
      }
      dg += gz * xh;
      db += gz;
    }
    dg = block_sum(dg, scratch);
    db = block_sum(db, scratch);
    if (threadIdx.x == 0) { dgamma_part[(long long)i * C + c] = dg; dbeta_part[(long long)i * C + c] = db; }
    s1 += db * ga;
    s2 += dg * ga;
  }
  // This block's partials are visible device-wide before its ticket is taken (thread 0 wrote them; the fence
  // orders its writes, the barrier the other threads' view of `last`).
  if (threadIdx.x == 0) {
    __threadfence();
    last[0] = atomicAdd(ticket, 1) == (int)(gridDim.x * gridDim.y) - 1;
  }
  __syncthreads();
  if (last[0]) {
    __threadfence();
    const volatile float* pg = dgamma_part;
    const volatile float* pb = dbeta_part;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float sg = 0.0f, sb = 0.0f;
      for (int n = 0; n < (int)gridDim.y; n++) {
        sg += pg[(long long)n * C + c];
        sb += pb[(long long)n * C + c];
      }
      dgamma[c] = sg;
      dbeta[c] = sb;
    }
    if (threadIdx.x == 0) *ticket = 0;
  }
  if (!dx) return;
  // block_sum's barriers above make the staged values visible to every thread.
  const float* xg = stage ? staged : x + base;
  const float* gg = stage ? staged + M : gy + base;
  const float a1 = s1 / M, a2 = s2 / M;
  // Channel by channel, so that each channel's sum is one block sum; thread p takes pixel p (coalesced in dx).
  for (int j = 0; j < cpg; j++) {
    const int c = g * cpg + j;
    const float ga = gamma[c], be = beta[c];
    float cs = 0.0f;
    for (int p = threadIdx.x; p < plane; p += blockDim.x) {
      const int e = j * plane + p;
      const float xh = (xg[e] - m) * r;
      float gz = gg[e];
      if (silu) {
        const float z = xh * ga + be, sg = sigmoidf_(z);
        gz *= sg * (1.0f + z * (1.0f - sg));
      }
      const float v = r * (gz * ga - a1 - xh * a2);
      const float d = accumulate ? dx[base + e] + v : v;
      dx[base + e] = d;
      if (dxb) write_nhwc(dxb, base + e, C, plane, d);
      cs += d;
    }
    if (dx_sums) {
      cs = block_sum(cs, scratch);
      if (threadIdx.x == 0) {
        dx_sums[(long long)i * C + c] = cs;
        if (dx_sums_b) dx_sums_b[(long long)i * sums_stride + c] = f32_to_bf16(cs);
        if (dx_sums_f) dx_sums_f[(long long)i * sums_stride + c] = cs;
      }
    }
  }
}
