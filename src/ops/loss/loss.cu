// loss.cu: the losses' kernels, as src/ops/loss/cpu.rs: the mean-squared error's gradient (its value is a
// reduction, reduce.cu's sumsq_partials) and the softmax cross-entropy.
// All launch with grid CEIL_DIV(elements, 256) (capped; grid-stride loops) and block 256.
#include "common.cuh"

// dp = scale * (p - t), scale = 2*dL/N with dL = gloss[0], read here so that it never visits the host. When
// dp_sums is given, dp ([images, C, plane], n words) is also written as the operand of the conv backward that reads
// it (write_nhwc into dp_nhwc) with its per-image channel sums [images, C] (its bias gradient's terms): then one
// block per (channel, image), launched as grid (C, images), block 256; otherwise grid-stride, grid
// CEIL_DIV(n, 256) (capped), block 256.
extern "C" __global__ void __launch_bounds__(256)
mse_bwd(const float* __restrict__ p, const float* __restrict__ t, float* __restrict__ dp,
        const float* __restrict__ gloss, long long n, bf16* __restrict__ dp_nhwc, float* __restrict__ dp_sums, int C,
        int plane) {
  const float scale = 2.0f * gloss[0] / (float)n;  // formed as the CPU forms it
  if (!dp_sums) {
    GRID_STRIDE(e, n) dp[e] = scale * (p[e] - t[e]);
    return;
  }
  __shared__ float scratch[32];
  const long long first = ((long long)blockIdx.y * C + blockIdx.x) * plane;
  float s = 0.0f;
  for (int q = threadIdx.x; q < plane; q += blockDim.x) {
    const long long e = first + q;
    const float v = scale * (p[e] - t[e]);
    dp[e] = v;
    write_nhwc(dp_nhwc, e, C, plane, v);
    s += v;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) dp_sums[(long long)blockIdx.y * C + blockIdx.x] = s;
}

// Per row i of z [n, classes]: lse[i] = m + logf(sum_j expf(z_ij - m)) with m = max_j z_ij (no term overflows),
// and loss_rows[i] = lse[i] - z_i[label_i] (labels are class indices, checked on the host). One thread per row, the
// classes in order as on the CPU; the caller averages loss_rows with finish_sum.
extern "C" __global__ void cross_entropy_rows(const float* __restrict__ z, const int* __restrict__ labels,
                                              float* __restrict__ lse, float* __restrict__ loss_rows, int n,
                                              int classes) {
  GRID_STRIDE(i, n) {
    const float* row = z + i * classes;
    float m = row[0];
    for (int j = 1; j < classes; j++) m = fmaxf(m, row[j]);
    float s = 0.0f;
    for (int j = 0; j < classes; j++) s += expf(row[j] - m);
    const float l = m + logf(s);
    lse[i] = l;
    loss_rows[i] = l - row[labels[i]];
  }
}

// dz[i][j] = (expf(z_ij - lse_i) - [j == label_i]) * scale, scale = dL/n formed on the host as the CPU does.
extern "C" __global__ void cross_entropy_bwd(const float* __restrict__ z, const int* __restrict__ labels,
                                             const float* __restrict__ lse, float* __restrict__ dz, float scale,
                                             int n, int classes) {
  GRID_STRIDE(e, (long long)n * classes) {
    const long long i = e / classes;
    const float onehot = labels[i] == (int)(e % classes) ? 1.0f : 0.0f;
    dz[e] = (expf(z[e] - lse[i]) - onehot) * scale;
  }
}
