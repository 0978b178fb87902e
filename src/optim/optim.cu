// optim.cu: fused AdamW and EMA updates, in the f32 operation order of src/optim (PyTorch's), so that with FMA
// contraction off a GPU step equals the CPU step to the bit.
// nvrtc-options: --fmad=false
#include "common.cuh"

// One AdamW step over n elements, the scalars formed on the host in f64 then rounded (AdamW::step):
// p *= decay; m += w1*(g - m); v = v*b2 + w2*g*g; p += neg_step*m / (sqrt(v)/bc2_sqrt + eps).
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void adamw(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                                 const float* __restrict__ g, long long n, float decay, float w1, float b2,
                                 float w2, float neg_step, float bc2_sqrt, float eps) {
  GRID_STRIDE(e, n) {
    const float ge = g[e];
    float pe = p[e] * decay;
    const float me = m[e] + w1 * (ge - m[e]);
    const float ve = v[e] * b2 + w2 * ge * ge;
    pe += neg_step * me / (sqrtf(ve) / bc2_sqrt + eps);
    p[e] = pe; m[e] = me; v[e] = ve;
  }
}

// shadow = shadow*d + alpha*p (Ema::update: mul_(d) then add_(p, alpha = 1 - d)).
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void ema_update(float* __restrict__ shadow, const float* __restrict__ p, long long n, float d,
                                      float alpha) {
  GRID_STRIDE(e, n) shadow[e] = shadow[e] * d + alpha * p[e];
}
