// elementwise.cu: SiLU and ReLU forward/backward, channel-block copies (concat and split), MSE gradient, and the
// in-place sum that accumulates gradients where a value feeds several ops.
// All launch with grid CEIL_DIV(n, 256) (capped; grid-stride loops) and block 256.
#include "common.cuh"

static __device__ __forceinline__ float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

// y = x * sigmoid(x).
extern "C" __global__ void silu_fwd(const float* __restrict__ x, float* __restrict__ y, long long n) {
  GRID_STRIDE(e, n) { const float v = x[e]; y[e] = v * sigmoidf_(v); }
}

// dx = gy * sigmoid(x) * (1 + x*(1 - sigmoid(x))).
extern "C" __global__ void silu_bwd(const float* __restrict__ x, const float* __restrict__ gy,
                                    float* __restrict__ dx, long long n) {
  GRID_STRIDE(e, n) {
    const float v = x[e], s = sigmoidf_(v);
    dx[e] = gy[e] * (s * (1.0f + v * (1.0f - s)));
  }
}

// dst[i][dst_off + c][p] = src[i][src_off + c][p] for c < count, images i < n, p < plane; src has src_c channels
// and dst dst_c. Concat is two of these into one dst, split two out of one src.
extern "C" __global__ void copy_channels(const float* __restrict__ src, int src_c, int src_off,
                                         float* __restrict__ dst, int dst_c, int dst_off, int count, int n,
                                         int plane) {
  GRID_STRIDE(e, (long long)n * count * plane) {
    const int p = e % plane, c = e / plane % count;
    const long long i = e / ((long long)plane * count);
    dst[(i * dst_c + dst_off + c) * plane + p] = src[(i * src_c + src_off + c) * plane + p];
  }
}

// dp = scale * (p - t), scale = 2*dL/N formed on the host as the CPU does.
extern "C" __global__ void mse_bwd(const float* __restrict__ p, const float* __restrict__ t, float* __restrict__ dp,
                                   float scale, long long n) {
  GRID_STRIDE(e, n) dp[e] = scale * (p[e] - t[e]);
}

// acc += g (gradient accumulation; one rounding per element, as the CPU's `+=`).
extern "C" __global__ void add_assign(float* __restrict__ acc, const float* __restrict__ g, long long n) {
  GRID_STRIDE(e, n) acc[e] += g[e];
}

// y = max(x, 0); a NaN stays NaN, as in torch.relu.
extern "C" __global__ void relu_fwd(const float* __restrict__ x, float* __restrict__ y, long long n) {
  GRID_STRIDE(e, n) { const float v = x[e]; y[e] = v < 0.0f ? 0.0f : v; }
}

// dx = gy * [x > 0].
extern "C" __global__ void relu_bwd(const float* __restrict__ x, const float* __restrict__ gy, float* __restrict__ dx,
                                    long long n) {
  GRID_STRIDE(e, n) dx[e] = x[e] > 0.0f ? gy[e] : 0.0f;
}
