// optim.cu: fused AdamW and EMA updates, in the f32 operation order of src/optim (PyTorch's), so that with FMA
// contraction off a GPU step equals the CPU step to the bit.
// nvrtc-options: --fmad=false
#include "common.cuh"

// One AdamW update of element e, the scalars formed on the host in f64 then rounded (AdamW::step):
// p *= decay; m += w1*(g - m); v = v*b2 + w2*g*g; p += neg_step*m / (sqrt(v)/bc2_sqrt + eps). Returns the new p.
static __device__ __forceinline__ float adamw_at(float* __restrict__ p, float* __restrict__ m,
                                                 float* __restrict__ v, long long e, float ge, float decay, float w1,
                                                 float b2, float w2, float neg_step, float bc2_sqrt, float eps) {
  float pe = p[e] * decay;
  const float me = m[e] + w1 * (ge - m[e]);
  const float ve = v[e] * b2 + w2 * ge * ge;
  pe += neg_step * me / (sqrtf(ve) / bc2_sqrt + eps);
  p[e] = pe; m[e] = me; v[e] = ve;
  return pe;
}

// shadow = shadow*d + alpha*p at element e (Ema::update: mul_(d) then add_(p, alpha = 1 - d)).
static __device__ __forceinline__ void ema_at(float* __restrict__ shadow, long long e, float pe, float d,
                                              float alpha) {
  shadow[e] = shadow[e] * d + alpha * pe;
}

// One AdamW step over n elements (adamw_at). Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void adamw(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                                 const float* __restrict__ g, long long n, float decay, float w1, float b2,
                                 float w2, float neg_step, float bc2_sqrt, float eps) {
  GRID_STRIDE(e, n) adamw_at(p, m, v, e, g[e], decay, w1, b2, w2, neg_step, bc2_sqrt, eps);
}

// The whole optimiser step over arenas of n words laid out alike: the gradient scaled by the clip coefficient
// coef[0] when it is below 1 (scale_by), AdamW (adamw), then the EMA of the new parameter (ema_update), each in
// the same f32 operations as those kernels, so the result equals theirs run one after the other, to the bit.
// With a plan, its current row's step-dependent scalars (the bias corrections and the EMA's decay) replace the
// arguments. Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void adamw_ema(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                                     const float* __restrict__ g, float* __restrict__ shadow,
                                     const float* __restrict__ coef, long long n, float decay, float w1, float b2,
                                     float w2, float neg_step, float bc2_sqrt, float eps, float d, float alpha,
                                     const float* __restrict__ plan) {
  if (plan) {
    const float* row = plan_row(plan);
    neg_step = row[PLAN_NEG_STEP];
    bc2_sqrt = row[PLAN_BC2_SQRT];
    d = row[PLAN_EMA_D];
    alpha = row[PLAN_EMA_ALPHA];
  }
  const float c = coef[0];
  GRID_STRIDE(e, n) {
    float ge = g[e];
    if (c < 1.0f) ge *= c;
    ema_at(shadow, e, adamw_at(p, m, v, e, ge, decay, w1, b2, w2, neg_step, bc2_sqrt, eps), d, alpha);
  }
}

// The EMA over n elements (ema_at). Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void ema_update(float* __restrict__ shadow, const float* __restrict__ p, long long n, float d,
                                      float alpha) {
  GRID_STRIDE(e, n) ema_at(shadow, e, p[e], d, alpha);
}

// The end of a planned training step (StepPlan): its loss, gradient norm and clip coefficient, written to `staged`,
// copied to its words of the statistics ring, and the plan moved on to the next step's row. The host checked that
// every row's words lie in `ring`. With no `staged` (a sampler's plan, which stages nothing), only the plan moves on.
// Launch: grid 1, block 1.
extern "C" __global__ void plan_advance(float* __restrict__ plan, const float* __restrict__ staged,
                                        float* __restrict__ ring) {
  if (staged) {
    const unsigned at = plan_word(plan_row(plan), PLAN_STATS);
    for (int i = 0; i < 3; i++) ring[at + i] = staged[i];
  }
  plan[0] = __uint_as_float(__float_as_uint(plan[0]) + 1u);
}
