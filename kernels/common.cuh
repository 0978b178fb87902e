// kernels/common.cuh: helpers shared by every kernel file. Compiled by NVRTC for the GPU and by g++ (with
// emu/shim.h force-included) for the CPU emulator; `static` on helpers keeps the emulator's object files from
// exporting clashing symbols.
#pragma once

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

// Block size of the elementwise and reduction kernels (a multiple of 32; the reductions assume it).
#define BLOCK 256

// Dynamic shared memory. `extern __shared__` does not survive the emulator's `__shared__ -> static thread_local`,
// so there it is a per-block buffer from the runtime, filled with 0x7fc07fc0 (NaN as f32 and bf16) per block.
#ifdef CUDA_EMU
#define DYN_SHARED(T, name) T* const name = static_cast<T*>(emu_dynamic_smem())
#else
#define DYN_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

// 64-bit integer types without <cstdint>, which NVRTC lacks.
typedef unsigned long long u64;

// Grid-stride loop over [0, n): correct for any grid size, so launches can cap their grid.
#define GRID_STRIDE(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
       i += (long long)blockDim.x * gridDim.x)

// ---- reductions -------------------------------------------------------------------------------------------------
// Sum over the 32 lanes of a warp; every lane gets the total. The butterfly order is fixed, so the result is too.
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a 1-D block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the total.
// `scratch` is 32 floats of shared memory, free again when this returns. Fixed order: warp sums, then the
// warp totals summed by warp 0.
static __device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = warp_sum(lane < nwarps ? scratch[lane] : 0.0f);
  __syncthreads();  // scratch may be reused right after
  return v;
}

// ---- Philox4x32-10 and Box-Muller, exactly as src/rng.rs ------------------------------------------------------
// Element `index` of stream `stream` under `seed`: counter = [index lo, index hi, stream lo, stream hi],
// key = [seed lo, seed hi]. The integer part is bit-exact with the CPU; the normal differs by at most ~2 ulp
// (logf, sqrtf, cosf).
struct uint4_ { unsigned x, y, z, w; };

static __device__ __forceinline__ uint4_ philox4x32_10(uint4_ c, unsigned k0, unsigned k1) {
#pragma unroll
  for (int r = 0; r < 10; r++) {
    if (r > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    const unsigned long long p0 = 0xD2511F53ull * c.x, p1 = 0xCD9E8D57ull * c.z;
    c = uint4_{(unsigned)(p1 >> 32) ^ c.y ^ k0, (unsigned)p1, (unsigned)(p0 >> 32) ^ c.w ^ k1, (unsigned)p0};
  }
  return c;
}

// The four words of element `index` (rng::uniform_u32x4).
static __device__ __forceinline__ uint4_ philox_words(u64 seed, u64 stream, u64 index) {
  return philox4x32_10(uint4_{(unsigned)index, (unsigned)(index >> 32), (unsigned)stream, (unsigned)(stream >> 32)},
                       (unsigned)seed, (unsigned)(seed >> 32));
}

// An integer in [0, n) by Lemire's multiply-high on the first word, (w0 * n) >> 32: rng::uniform_below, bit-exact.
static __device__ __forceinline__ unsigned philox_uniform_below(u64 seed, u64 stream, u64 index, unsigned n) {
  return (unsigned)(((u64)philox_words(seed, stream, index).x * (u64)n) >> 32);
}

static __device__ __forceinline__ float philox_normal(u64 seed, u64 stream, u64 index) {
  const uint4_ w = philox_words(seed, stream, index);
  const float two_pow_m24 = 1.0f / 16777216.0f;
  const float u1 = (float)((w.x >> 8) + 1) * two_pow_m24, u2 = (float)(w.y >> 8) * two_pow_m24;
  // 2*pi rounded to f32, as Rust's std::f32::consts::TAU.
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

// ---- bfloat16 and the tensor-core instructions ----------------------------------------------------------------
// Each PTX instruction the tensor-core kernels use sits behind one helper here. On the GPU it is inline PTX; under
// CUDA_EMU the emulator (emu/shim.h, emu/runtime.cpp) implements it with the PTX ISA's semantics, so a kernel
// tested on the emulator issues exactly these operations on the GPU.

// A bfloat16 value as stored: the upper 16 bits of an f32.
typedef unsigned short bf16;

// f32 -> bf16, round to nearest even (NaN stays a quiet NaN). Integer arithmetic, so the GPU and the emulator
// round every value to the same bits.
static __device__ __forceinline__ bf16 f32_to_bf16(float x) {
  unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16)(u >> 16);
}

static __device__ __forceinline__ float bf16_to_f32(bf16 h) { return __uint_as_float((unsigned)h << 16); }

// The elementwise activations, one code per UnaryKind (src/ops/unary/mod.rs; the codes are its discriminants): the
// GPU's formulas, for unary.cu's kernels, the GEMM epilogue that applies one and GroupNorm's fused SiLU.
#define UNARY_SILU 0
#define UNARY_RELU 1

static __device__ __forceinline__ float sigmoidf_(float z) { return 1.0f / (1.0f + expf(-z)); }

// f(x).
static __device__ __forceinline__ float unary_apply(int kind, float x) {
  switch (kind) {
    case UNARY_SILU: return x * sigmoidf_(x);
    case UNARY_RELU: return x < 0.0f ? 0.0f : x;  // a NaN stays NaN, as in torch.relu
  }
  return nanf("");  // an unknown kind: NaN, which every test notices
}

// gy * f'(x).
static __device__ __forceinline__ float unary_grad(int kind, float x, float gy) {
  switch (kind) {
    case UNARY_SILU: { const float s = sigmoidf_(x); return gy * (s * (1.0f + x * (1.0f - s))); }
    case UNARY_RELU: return x > 0.0f ? gy : 0.0f;
  }
  return nanf("");
}

// Element e of an NCHW tensor [n, C, plane] (a [rows, C] matrix when plane is 1) written into its copy in the
// layout the tensor-core GEMMs read: bf16 channels-last [n, plane, CP], CP = C rounded up to 8, the padding 0
// (written with each pixel's last channel), rounded as nchw_to_nhwc_bf16 rounds. For the kernels that write a
// conv's operand beside their f32 output.
static __device__ __forceinline__ void write_nhwc(bf16* __restrict__ nhwc, long long e, int C, int plane, float v) {
  const int cp = CEIL_DIV(C, 8) * 8;
  const long long ic = e / plane, i = ic / C;
  const int p = (int)(e - ic * plane), c = (int)(ic - i * C);
  bf16* px = nhwc + (i * plane + p) * cp;
  px[c] = f32_to_bf16(v);
  if (c == C - 1)
    for (int k = C; k < cp; k++) px[k] = (bf16)0;
}

// Two bf16 in one 32-bit register, `lo` in the low half (the lower column or row index of a fragment pair).
static __device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
  return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

#ifndef CUDA_EMU
// d = a·b + c for one warp: A 16x16 (row-major), B 16x8 (column-major), bf16 operands, f32 accumulators. Fragment
// layout (PTX ISA, mma.m16n8k16), with g = lane >> 2 and t = lane & 3, each register holding a pair of
// consecutive columns (A, C) or rows (B):
//   a[0]: A[g][2t..2t+1]   a[1]: A[g+8][2t..2t+1]   a[2]: A[g][2t+8..2t+9]   a[3]: A[g+8][2t+8..2t+9]
//   b[0]: B[2t..2t+1][g]   b[1]: B[2t+8..2t+9][g]
//   c[0..1]: C[g][2t..2t+1]   c[2..3]: C[g+8][2t..2t+1]
static __device__ __forceinline__ void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2],
                                                      const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

static __device__ __forceinline__ unsigned smem_addr(const void* p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

// ldmatrix .m8n8 .b16: 8x8 matrices of 16-bit values from shared memory, each row 16 contiguous bytes (16-byte
// aligned). Lane l supplies the address of row l & 7 of matrix l >> 3 (lanes beyond the matrix count are
// ignored). Lane l receives, for each matrix i, r[i] = (M_i[l>>2][2(l&3)], M_i[l>>2][2(l&3)+1]); with `.trans`,
// r[i] = (M_i[2(l&3)][l>>2], M_i[2(l&3)+1][l>>2]).
static __device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
static __device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(row)));
}
static __device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(row)));
}
static __device__ __forceinline__ void ldmatrix_x1(unsigned r[1], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_addr(row)));
}
static __device__ __forceinline__ void ldmatrix_x1_trans(unsigned r[1], const bf16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_addr(row)));
}

// cp.async: copies 16 bytes from global to shared memory (both 16-byte aligned) without passing through
// registers; the first `src_bytes` (0 or 16) are read and the rest zero-filled, so a tile's padding and its
// out-of-range rows cost no branch. The copies a thread issued become visible to it after cp_async_wait<N>
// leaves at most N of its committed groups pending, and to the rest of the block after a barrier that follows.
static __device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#else
// The emulator's versions (emu/runtime.cpp), with the same signatures and the PTX ISA's semantics. Beyond what the
// GPU checks, they fail the launch on a partial or divergent warp, on a misaligned address or one outside dynamic
// shared memory (where the tensor-core kernels keep their tiles), and on cp.async copies a thread never waited for;
// a cp.async destination reads as NaN (0x7fc07fc0) until the wait that completes it.
static __device__ __forceinline__ void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2],
                                                      const float c[4]) {
  emu_mma_bf16_16816(d, a, b, c, EMU_SITE);
}
static __device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const bf16* row) {
  emu_ldmatrix(r, row, 4, 0, EMU_SITE);
}
static __device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const bf16* row) {
  emu_ldmatrix(r, row, 4, 1, EMU_SITE);
}
static __device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const bf16* row) {
  emu_ldmatrix(r, row, 2, 0, EMU_SITE);
}
static __device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const bf16* row) {
  emu_ldmatrix(r, row, 2, 1, EMU_SITE);
}
static __device__ __forceinline__ void ldmatrix_x1(unsigned r[1], const bf16* row) {
  emu_ldmatrix(r, row, 1, 0, EMU_SITE);
}
static __device__ __forceinline__ void ldmatrix_x1_trans(unsigned r[1], const bf16* row) {
  emu_ldmatrix(r, row, 1, 1, EMU_SITE);
}
static __device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  emu_cp_async_16(smem, gmem, src_bytes);
}
static __device__ __forceinline__ void cp_async_commit() { emu_cp_async_commit(); }
template <int N> static __device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group takes a non-negative count");
  emu_cp_async_wait(N);
}
#endif

// ---- the training step's plan ------------------------------------------------------------------------------------
// What changes from one training step to the next (StepPlan in src/train/plan.rs), read from device memory so that
// one captured step (a CUDA graph) serves every step: word 0 is the row of the step being taken (an unsigned int's
// bits), row r holds words 1 + r * PLAN_ROW on, integers as their bits. plan_advance moves word 0 on a row.
#define PLAN_ROW 12
#define PLAN_FIRST 0         // the batch's first position in the epoch's permutation
#define PLAN_T_STREAM 1      // Philox stream of the timesteps (2 words, low first)
#define PLAN_NOISE_STREAM 3  // Philox stream of the noise (2 words)
#define PLAN_LABEL_STREAM 5  // Philox stream of the label drops (2 words)
#define PLAN_STATS 7         // the first of the step's 3 words in the statistics ring
#define PLAN_NEG_STEP 8      // AdamW's -lr / (1 - beta1^k)
#define PLAN_BC2_SQRT 9      // AdamW's sqrt(1 - beta2^k)
#define PLAN_EMA_D 10        // the EMA's decay
#define PLAN_EMA_ALPHA 11    // and 1 - decay

static __device__ __forceinline__ const float* plan_row(const float* plan) {
  return plan + 1 + (u64)__float_as_uint(plan[0]) * PLAN_ROW;
}
static __device__ __forceinline__ unsigned plan_word(const float* row, int i) { return __float_as_uint(row[i]); }
static __device__ __forceinline__ u64 plan_u64(const float* row, int i) {
  return (u64)plan_word(row, i) | (u64)plan_word(row, i + 1) << 32;
}
