// pool.cu: 2x2 max pooling with stride 2 (PyTorch's MaxPool2d(2)), forward and backward, as src/ops/pool/cpu.rs.
// Both launch with grid CEIL_DIV(elements, 256) (capped; grid-stride loops) and block 256.
#include "common.cuh"

// y[p][oy][ox] = max of the 2x2 window at (2*oy, 2*ox) of plane p of x [planes, H, W], for oy < H/2, ox < W/2 (an
// odd last row or column is not pooled: floor mode). argmax = the window offset 2*dy + dx of the first maximum in
// row-major order, a NaN counting as a maximum (PyTorch's rule; `v != v` is the NaN test, valid without
// fast-math), saved for the backward.
extern "C" __global__ void max_pool2d_fwd(const float* __restrict__ x, float* __restrict__ y,
                                          int* __restrict__ argmax, int planes, int H, int W) {
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
    argmax[e] = arg;
  }
}

// dx[p][iy][ix] = gy[p][iy/2][ix/2] when (iy, ix) is its window's saved maximum, else 0 (also outside every
// window). One thread per input pixel: a gather, so no two threads write one address.
extern "C" __global__ void max_pool2d_bwd(const int* __restrict__ argmax, const float* __restrict__ gy,
                                          float* __restrict__ dx, int planes, int H, int W) {
  const int OH = H / 2, OW = W / 2;
  GRID_STRIDE(e, (long long)planes * H * W) {
    const int ix = e % W, iy = e / W % H, oy = iy / 2, ox = ix / 2;
    const long long p = e / ((long long)H * W);
    float g = 0.0f;
    if (oy < OH && ox < OW) {
      const long long o = (p * OH + oy) * OW + ox;
      if (argmax[o] == 2 * (iy % 2) + ix % 2) g = gy[o];
    }
    dx[e] = g;
  }
}
