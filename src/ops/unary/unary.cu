// unary.cu: the elementwise activations, forward and backward, one `case` per UnaryKind (src/ops/unary/mod.rs;
// the codes are its discriminants). Launch with grid CEIL_DIV(n, 256) (capped; grid-stride loops) and block 256.
// The formulas themselves (unary_apply, unary_grad) are in common.cuh, shared with the GEMM epilogue that applies an
// activation (conv_gather_mma) and GroupNorm's fused SiLU.
#include "common.cuh"

// y = f(x), and when y_nhwc is given, y as a [rows, cols] matrix in the GEMMs' layout: the operand of the linear
// layers that read y. The kind is uniform across the grid, so the switch costs no divergence.
extern "C" __global__ void unary_fwd(int kind, const float* __restrict__ x, float* __restrict__ y,
                                     bf16* __restrict__ y_nhwc, long long n, int cols) {
  GRID_STRIDE(e, n) {
    const float v = unary_apply(kind, x[e]);
    y[e] = v;
    if (y_nhwc) write_nhwc(y_nhwc, e, cols, 1, v);
  }
}

// dx = gy * f'(x), and when dx_nhwc is given, dx as a [rows, cols] matrix in the GEMMs' layout: the operand of the
// backward of the linear layer that made x.
extern "C" __global__ void unary_bwd(int kind, const float* __restrict__ x, const float* __restrict__ gy,
                                     float* __restrict__ dx, bf16* __restrict__ dx_nhwc, long long n, int cols) {
  GRID_STRIDE(e, n) {
    const float v = unary_grad(kind, x[e], gy[e]);
    dx[e] = v;
    if (dx_nhwc) write_nhwc(dx_nhwc, e, cols, 1, v);
  }
}
