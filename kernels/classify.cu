// classify.cu: what a classifier adds to the UNet's kernels, as src/cpu/classify.rs: 2x2 max pooling (stride 2,
// PyTorch's MaxPool2d(2)) and the softmax cross-entropy loss.
// All launch with grid CEIL_DIV(elements, 256) (capped; grid-stride loops) and block 256.
#include "common.cuh"

// y[p][oy][ox] = max of the 2x2 window at (2*oy, 2*ox) of plane p of x [planes, H, W], for oy < H/2, ox < W/2 (an
// odd last row or column is not pooled: floor mode). argmax = the window offset 2*dy + dx of the first maximum in
// row-major order, a NaN counting as a maximum (PyTorch's rule; `v != v` is the NaN test, valid without
// fast-math), stored as a float for the backward.
extern "C" __global__ void max_pool2d_fwd(const float* __restrict__ x, float* __restrict__ y,
                                          float* __restrict__ argmax, int planes, int H, int W) {
  const int OH = H / 2, OW = W / 2;
  GRID_STRIDE(e, (long long)planes * OH * OW) {
    const int ox = e % OW, oy = e / OW % OH;
    const long long p = e / ((long long)OH * OW);
    const float* win = x + (p * H + 2 * oy) * W + 2 * ox;
    float best = win[0];
    int arg = 0;
    for (int k = 1; k < 4; k++) {
      const float v = win[(k >> 1) * W + (k & 1)];
      if (v > best || v != v) { best = v; arg = k; }
    }
    y[e] = best;
    argmax[e] = (float)arg;
  }
}

// dx[p][iy][ix] = gy[p][iy/2][ix/2] when (iy, ix) is its window's saved maximum, else 0 (also outside every
// window). One thread per input pixel: a gather, so no two threads write one address.
extern "C" __global__ void max_pool2d_bwd(const float* __restrict__ argmax, const float* __restrict__ gy,
                                          float* __restrict__ dx, int planes, int H, int W) {
  const int OH = H / 2, OW = W / 2;
  GRID_STRIDE(e, (long long)planes * H * W) {
    const int ix = e % W, iy = e / W % H, oy = iy / 2, ox = ix / 2;
    const long long p = e / ((long long)H * W);
    float g = 0.0f;
    if (oy < OH && ox < OW) {
      const long long o = (p * OH + oy) * OW + ox;
      if ((int)argmax[o] == 2 * (iy % 2) + ix % 2) g = gy[o];
    }
    dx[e] = g;
  }
}

// Per row i of z [n, classes]: lse[i] = m + logf(sum_j expf(z_ij - m)) with m = max_j z_ij (no term overflows),
// and loss_rows[i] = lse[i] - z_i[label_i] (labels are class indices held in floats). One thread per row, the
// classes in order as on the CPU; the caller averages loss_rows with finish_sum.
extern "C" __global__ void cross_entropy_rows(const float* __restrict__ z, const float* __restrict__ labels,
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
    loss_rows[i] = l - row[(int)labels[i]];
  }
}

// dz[i][j] = (expf(z_ij - lse_i) - [j == label_i]) * scale, scale = dL/n formed on the host as the CPU does.
extern "C" __global__ void cross_entropy_bwd(const float* __restrict__ z, const float* __restrict__ labels,
                                             const float* __restrict__ lse, float* __restrict__ dz, float scale,
                                             int n, int classes) {
  GRID_STRIDE(e, (long long)n * classes) {
    const long long i = e / classes;
    const float onehot = (int)labels[i] == (int)(e % classes) ? 1.0f : 0.0f;
    dz[e] = (expf(z[e] - lse[i]) - onehot) * scale;
  }
}
