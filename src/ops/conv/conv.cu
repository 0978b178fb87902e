// conv.cu: the data movement around the GEMMs of conv2d and conv_transpose2d (im2col and its adjoint col2im) and
// the per-channel bias epilogue. Geometry as ConvGeom (src/desc.rs): image [C, H, W], kernel KxK, stride S, padding P, output grid [OH, OW];
// the column matrix of one image is [C*K*K, OH*OW].
#include "common.cuh"

// col[i][(c*K + ky)*K + kx][oy*OW + ox] = x[i][c][oy*S - P + ky][ox*S - P + kx], 0 outside the image, for all `n`
// images at once. Launch: grid CEIL_DIV(n*C*K*K*OH*OW, 256) (capped; grid-stride), block 256.
extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ col, int n, int C, int H, int W,
                                  int K, int S, int P, int OH, int OW) {
  const long long plane = (long long)OH * OW, rows = (long long)C * K * K;
  GRID_STRIDE(e, n * rows * plane) {
    const int ox = e % OW, oy = e / OW % OH;
    const long long r = e / plane % rows, i = e / (plane * rows);
    const int kx = r % K, ky = r / K % K, c = r / (K * K);
    const int iy = oy * S - P + ky, ix = ox * S - P + kx;
    col[e] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((i * C + c) * H + iy) * W + ix] : 0.0f;
  }
}

// The adjoint of im2col: x[i][c][iy][ix] = sum of the column entries that im2col would read from (iy, ix), taken
// in (ky, kx) order as the CPU does. A gather (one thread per pixel), so no two threads write one address.
// Launch: grid CEIL_DIV(n*C*H*W, 256) (capped; grid-stride), block 256.
extern "C" __global__ void col2im(const float* __restrict__ col, float* __restrict__ x, int n, int C, int H, int W,
                                  int K, int S, int P, int OH, int OW) {
  const long long plane = (long long)OH * OW;
  GRID_STRIDE(e, (long long)n * C * H * W) {
    const int ix = e % W, iy = e / W % H;
    const long long ic = e / ((long long)H * W);  // image * C + channel
    const float* cc = col + ic * K * K * plane;   // rows (c, 0, 0).. of image i: (i*C + c)*K*K rows
    float s = 0.0f;
    for (int ky = 0; ky < K; ky++) {
      const int ty = iy + P - ky;  // = oy * S
      if (ty < 0 || ty % S != 0 || ty / S >= OH) continue;
      for (int kx = 0; kx < K; kx++) {
        const int tx = ix + P - kx;
        if (tx < 0 || tx % S != 0 || tx / S >= OW) continue;
        s += cc[(ky * K + kx) * plane + (ty / S) * OW + tx / S];
      }
    }
    x[e] = s;
  }
}

// y[i][c][p] += bias[c] + chan_bias[i * cb_stride + c], either pointer may be null (the sum of the two is formed
// first, as the CPU epilogue does; chan_bias may be columns of a wider matrix). Also the bias of a linear layer
// (plane = 1). Launch: grid CEIL_DIV(n*C*plane, 256) (capped; grid-stride), block 256.
extern "C" __global__ void add_channel_bias(float* __restrict__ y, const float* __restrict__ bias,
                                            const float* __restrict__ chan_bias, int n, int C, int plane,
                                            int cb_stride) {
  GRID_STRIDE(e, (long long)n * C * plane) {
    const long long ic = e / plane, i = ic / C;
    const int c = (int)(ic - i * C);
    y[e] += (bias ? bias[c] : 0.0f) + (chan_bias ? chan_bias[i * cb_stride + c] : 0.0f);
  }
}
