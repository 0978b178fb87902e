// diffusion.cu: the forward process (q_sample with on-GPU Philox noise), the DDPM and DDIM sampler steps, and the
// sinusoidal time embedding, each the fused elementwise mirror of src/diffusion and src/nn/layers.rs.
// Built without FMA contraction so every a*b + c rounds twice, as on the CPU: the steps then agree to the bit
// given the same inputs and noise.
// nvrtc-options: --fmad=false
#include "common.cuh"

// noise[e] = normal(seed, stream, e) (src/rng.rs) and xt[e] = sqrt_ab[t_b]*x0[e] + sqrt_1m_ab[t_b]*noise[e], with
// b = e / per_item, t the per-item timesteps, and the two schedule tables resident on the device.
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void q_sample(const float* __restrict__ x0, const int* __restrict__ t,
                                    const float* __restrict__ sqrt_ab, const float* __restrict__ sqrt_1m_ab,
                                    float* __restrict__ noise, float* __restrict__ xt, long long n,
                                    long long per_item, u64 seed, u64 stream) {
  GRID_STRIDE(e, n) {
    const int ti = t[e / per_item];
    const float z = philox_normal(seed, stream, (u64)e);
    noise[e] = z;
    xt[e] = sqrt_ab[ti] * x0[e] + sqrt_1m_ab[ti] * z;
  }
}

// One DDPM step (DdpmCoefs): out = sra*(x - eps_coef*eps) + sigma*z, z = normal(seed, stream, e) when `noisy`,
// else no noise term. Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void ddpm_step(const float* __restrict__ x, const float* __restrict__ eps,
                                     float* __restrict__ out, long long n, float sra, float eps_coef, float sigma,
                                     u64 seed, u64 stream, int noisy) {
  GRID_STRIDE(e, n) {
    const float mean = sra * (x[e] - eps_coef * eps[e]);
    out[e] = noisy ? mean + sigma * philox_normal(seed, stream, (u64)e) : mean;
  }
}

// One DDIM step (DdimCoefs): x0 = clamp((x - s1m*eps)/sab, -1, 1) (a true division, and NaN passes the clamp as
// in Rust's f32::clamp), out = sab_prev*x0 + dir*eps (+ sigma*z when `noisy`).
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void ddim_step(const float* __restrict__ x, const float* __restrict__ eps,
                                     float* __restrict__ out, long long n, float s1m, float sab, float sab_prev,
                                     float dir, float sigma, u64 seed, u64 stream, int noisy) {
  GRID_STRIDE(e, n) {
    float x0 = (x[e] - s1m * eps[e]) / sab;
    x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);
    const float det = sab_prev * x0 + dir * eps[e];
    out[e] = noisy ? det + sigma * philox_normal(seed, stream, (u64)e) : det;
  }
}
