// diffusion.cu: the forward process (q_sample with on-GPU Philox noise, and the training batch drawn on the device),
// the DDPM, DDIM and DPM-Solver++ sampler steps, and the sinusoidal time embedding, each the fused elementwise mirror of
// src/diffusion and src/nn/layers.rs.
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

// The training step's batch drawn on the device, fused: item i = e / per_item is image perm[first + i] of the
// training set `images` ([N, per_item], resident), with timestep t_i = uniform_below(seed, t_stream, i, timesteps)
// and noise[e] = normal(seed, noise_stream, e) (src/rng.rs), and xt[e] = sqrt_ab[t_i]*x0[e] + sqrt_1m_ab[t_i]*noise[e]
// as q_sample; t_out[i] = t_i for the time embedding. When xt_nhwc is given, x_t (each item [C, per_item / C]) is
// also written as the first conv's operand (write_nhwc). With a plan, its current row's first position and streams
// replace `first`, `t_stream` and `noise_stream`. The host checked that perm's values index `images`, and the
// plan's rows that their batches lie in `perm`. Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void draw_batch(const float* __restrict__ images, const int* __restrict__ perm,
                                      long long first, const float* __restrict__ sqrt_ab,
                                      const float* __restrict__ sqrt_1m_ab, int timesteps, float* __restrict__ noise,
                                      float* __restrict__ xt, int* __restrict__ t_out, bf16* __restrict__ xt_nhwc,
                                      int C, long long n, long long per_item, u64 seed, u64 t_stream,
                                      u64 noise_stream, const float* __restrict__ plan) {
  if (plan) {
    const float* row = plan_row(plan);
    first = plan_word(row, PLAN_FIRST);
    t_stream = plan_u64(row, PLAN_T_STREAM);
    noise_stream = plan_u64(row, PLAN_NOISE_STREAM);
  }
  GRID_STRIDE(e, n) {
    const long long i = e / per_item, p = e - i * per_item;
    // Every element of an item draws the same t (one Philox call is cheap next to the normal's).
    const int ti = (int)philox_uniform_below(seed, t_stream, (u64)i, (unsigned)timesteps);
    const float x0 = images[(long long)perm[first + i] * per_item + p];
    const float z = philox_normal(seed, noise_stream, (u64)e);
    noise[e] = z;
    const float v = sqrt_ab[ti] * x0 + sqrt_1m_ab[ti] * z;
    xt[e] = v;
    if (xt_nhwc) write_nhwc(xt_nhwc, e, C, (int)(per_item / C), v);
    if (p == 0) t_out[i] = ti;
  }
}

// A training batch's class labels (DiffusionOps::draw_labels): out[i] = null when
// philox_uniform_below(seed, stream, i, drop_one_in) == 0 (diffusion::drops_label), else labels[perm[first + i]].
// With a plan, its current row's first position and label stream replace `first` and `stream`.
// Launch: grid CEIL_DIV(batch, 256) (capped; grid-stride), block 256.
extern "C" __global__ void draw_labels(const int* __restrict__ labels, const int* __restrict__ perm, long long first,
                                       int* __restrict__ out, long long batch, int null_label, int drop_one_in,
                                       u64 seed, u64 stream, const float* __restrict__ plan) {
  if (plan) {
    const float* row = plan_row(plan);
    first = plan_word(row, PLAN_FIRST);
    stream = plan_u64(row, PLAN_LABEL_STREAM);
  }
  GRID_STRIDE(i, batch) {
    const bool drop = philox_uniform_below(seed, stream, (u64)i, (unsigned)drop_one_in) == 0;
    out[i] = drop ? null_label : labels[perm[first + i]];
  }
}

// Classifier-free guidance over a doubled batch, the conditional half first (DiffusionOps::guide):
// out[e] = (1 + w) * eps[e] - w * eps[half + e]. Launch: grid CEIL_DIV(half, 256) (capped; grid-stride), block 256.
extern "C" __global__ void guide(const float* __restrict__ eps, float* __restrict__ out, long long half, float w) {
  GRID_STRIDE(e, half) out[e] = (1.0f + w) * eps[e] - w * eps[half + e];
}

// The time embedding's sinusoid (TimeEmbedding::sinusoid in src/nn/layers.rs) of n timesteps, [n, 2*half]:
// out[i][j] = sin(t_i * f_j) for j < half, cos(t_i * f_(j-half)) after, f_k = expf((c * k) / half) with
// c = -ln(10000) rounded to f32 by the host. Each step is one f32 operation in the host's order (the product, the
// division, exp, the product with t), so the emulator (the host's libm) gives the host's bits; a GPU's
// expf/sinf/cosf are within 2 ulp. When out_nhwc is given, the sinusoid is also written as the operand of the
// linear layer that reads it (write_nhwc). Launch: grid CEIL_DIV(n * 2 * half, 256) (capped; grid-stride), block 256.
extern "C" __global__ void time_sinusoid(const int* __restrict__ t, float* __restrict__ out,
                                         bf16* __restrict__ out_nhwc, long long n, int half, float c) {
  GRID_STRIDE(e, n * 2 * half) {
    const long long i = e / (2 * half);
    const int j = (int)(e - i * 2 * half), k = j < half ? j : j - half;
    const float f = expf((c * (float)k) / (float)half);
    const float a = (float)t[i] * f;
    const float v = j < half ? sinf(a) : cosf(a);
    out[e] = v;
    if (out_nhwc) write_nhwc(out_nhwc, e, 2 * half, 1, v);
  }
}

// ---- a sampler's plan ----------------------------------------------------------------------------------------------
// What changes from one sampler step to the next (SamplerPlan in src/diffusion/plan.rs), read from device memory so
// that one captured step (a CUDA graph) serves every step of a run: the layout of the training step's plan (word 0
// the row of the step being taken, PLAN_ROW words a row), each row holding the step's noise stream, whether it draws
// noise, and its step kernel's float coefficients in the kernel's argument order.
#define SAMPLE_NOISE_STREAM 0  // Philox stream of the step's noise (2 words, low first)
#define SAMPLE_NOISY 2         // 1 when the step draws noise, else 0
#define SAMPLE_COEFS 3         // the step kernel's float coefficients (up to 6)

// The current row of a sampler's plan: its noise stream and flag replace the kernel's, and the returned pointer
// holds the step's coefficients.
static __device__ __forceinline__ const float* sample_row(const float* plan, u64* stream, int* noisy) {
  const float* row = plan_row(plan);
  *stream = plan_u64(row, SAMPLE_NOISE_STREAM);
  *noisy = (int)plan_word(row, SAMPLE_NOISY);
  return row + SAMPLE_COEFS;
}

// A planned sampler step's time sinusoid: row plan[0] of `table` ([steps, dim], made on the host as
// TimeEmbedding::sinusoid makes an unplanned step's, which is uploaded) for each of n images, [n, dim], and its
// operand when out_nhwc is given (write_nhwc). Launch: grid CEIL_DIV(n * dim, 256) (capped; grid-stride), block 256.
extern "C" __global__ void plan_sinusoid(const float* __restrict__ plan, const float* __restrict__ table,
                                         float* __restrict__ out, bf16* __restrict__ out_nhwc, long long n,
                                         int dim) {
  const float* row = table + (u64)__float_as_uint(plan[0]) * dim;
  GRID_STRIDE(e, n * dim) {
    const float v = row[e % dim];
    out[e] = v;
    if (out_nhwc) write_nhwc(out_nhwc, e, dim, 1, v);
  }
}

// The sampler steps below take x and out unrestricted: a planned step updates x in place (out == x), each element
// read before it is written, by the same thread. With a plan, its current row's coefficients, noise stream and
// noise flag replace the arguments (sample_row).

// One DDPM step (DdpmCoefs): out = sra*(x - eps_coef*eps) + sigma*z, z = normal(seed, stream, e) when `noisy`,
// else no noise term. Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void ddpm_step(const float* x, const float* __restrict__ eps, float* out, long long n,
                                     float sra, float eps_coef, float sigma, u64 seed, u64 stream, int noisy,
                                     const float* __restrict__ plan) {
  if (plan) {
    const float* c = sample_row(plan, &stream, &noisy);
    sra = c[0], eps_coef = c[1], sigma = c[2];
  }
  GRID_STRIDE(e, n) {
    const float mean = sra * (x[e] - eps_coef * eps[e]);
    out[e] = noisy ? mean + sigma * philox_normal(seed, stream, (u64)e) : mean;
  }
}

// One DDIM step (DdimCoefs): x0 = (x - s1m*eps)/sab (a true division), clamped to [-1, 1] when `clamp` (NaN
// passes the clamp as in Rust's f32::clamp), out = sab_prev*x0 + dir*d (+ sigma*z when `noisy`), d = eps, or with
// `rederive` the noise re-derived from the clamped x0, (x - sab*x0)/s1m (GLIDE's guided DDIM).
// Launch: grid CEIL_DIV(n, 256) (capped; grid-stride), block 256.
extern "C" __global__ void ddim_step(const float* x, const float* __restrict__ eps, float* out, long long n,
                                     float s1m, float sab, float sab_prev, float dir, float sigma, int clamp,
                                     int rederive, u64 seed, u64 stream, int noisy, const float* __restrict__ plan) {
  if (plan) {
    const float* c = sample_row(plan, &stream, &noisy);
    s1m = c[0], sab = c[1], sab_prev = c[2], dir = c[3], sigma = c[4];
  }
  GRID_STRIDE(e, n) {
    const float xe = x[e];
    float x0 = (xe - s1m * eps[e]) / sab;
    if (clamp) x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);
    const float d = rederive ? (xe - sab * x0) / s1m : eps[e];
    const float det = sab_prev * x0 + dir * d;
    out[e] = noisy ? det + sigma * philox_normal(seed, stream, (u64)e) : det;
  }
}

// One DPM-Solver++(2M) or SDE-DPM-Solver++(2M) step (DpmCoefs, src/diffusion/dpm_solver.rs): x0 = (x - sigma*eps)
// / alpha, clamped to [-1, 1] when `clamp`; d = x0 + prev_coef*(x0 - x0_prev) for a second-order step
// (prev_coef != 0), else x0; x0_prev = x0 (each element read before it is written, by the same thread);
// out = x_coef*x + d_coef*d (+ noise_coef*z when `noisy`). Launch: grid CEIL_DIV(n, 256) (capped; grid-stride),
// block 256.
extern "C" __global__ void dpm_step(const float* x, const float* __restrict__ eps, float* __restrict__ x0_prev,
                                    float* out, long long n, float sigma, float alpha, float x_coef, float d_coef,
                                    float prev_coef, float noise_coef, int clamp, u64 seed, u64 stream, int noisy,
                                    const float* __restrict__ plan) {
  if (plan) {
    const float* c = sample_row(plan, &stream, &noisy);
    sigma = c[0], alpha = c[1], x_coef = c[2], d_coef = c[3], prev_coef = c[4], noise_coef = c[5];
  }
  GRID_STRIDE(e, n) {
    const float xe = x[e];
    float x0 = (xe - sigma * eps[e]) / alpha;
    if (clamp) x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);
    const float d = prev_coef != 0.0f ? x0 + prev_coef * (x0 - x0_prev[e]) : x0;
    x0_prev[e] = x0;
    const float det = x_coef * xe + d_coef * d;
    out[e] = noisy ? det + noise_coef * philox_normal(seed, stream, (u64)e) : det;
  }
}
