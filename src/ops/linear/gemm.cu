// gemm.cu: single-precision matrix multiply, the workhorse of conv, conv-transpose and linear layers.
#include "common.cuh"

// Tile of C per block (TM x TN), depth of one shared-memory stage (TK), and the 16x16 thread layout in which each
// thread owns a 4x4 sub-tile spread with stride 16 (so neighbouring threads touch neighbouring columns).
#define TM 64
#define TN 64
#define TK 16
// Shared tiles are stored [k][m] (and [k][n]) with rows of TM + SPAD words. A tile read along k (below) has the
// 32 threads of a warp store 16 consecutive k of 2 neighbouring m (an even one and the next); with a row pitch of
// 66 words those land in banks 2k + m, all 32 different, where a pitch of 64 would put every k in one bank and a
// pitch of 65 still pairs (k, m + 1) with (k + 1, m).
#define SPAD 2
#define TP (TM + SPAD)

// One operand's TM x TK slice at (o0, k0), where o is the operand's row of C (m for A, n for B): element (o, k)
// is p[o*K + k] (contiguous in k) unless kmajor, then p[k*O + o] (contiguous in o). Each thread loads 4 elements
// into registers, walking the contiguous dimension with consecutive threads so that a warp reads whole 64-byte
// runs (16 k of 2 rows, or 32 consecutive o) instead of 32 words K apart. Outside O x K the value is 0, so the
// product needs no bounds checks.
static __device__ __forceinline__ void load_tile(float (&r)[4], const float* __restrict__ p, int kmajor, int O,
                                                 int K, int o0, int k0, int tid) {
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int e = tid + 256 * i;
    const int o = o0 + (kmajor ? e % TM : e / TK), k = k0 + (kmajor ? e / TM : e % TK);
    r[i] = (o < O && k < K) ? p[kmajor ? (long long)k * O + o : (long long)o * K + k] : 0.0f;
  }
}

// Stores what load_tile loaded (same thread, same element order) to a [TK][TP] shared tile, transposing to [k][o].
static __device__ __forceinline__ void store_tile(float (*s)[TP], const float (&r)[4], int kmajor, int tid) {
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int e = tid + 256 * i;
    if (kmajor) s[e / TM][e % TM] = r[i];
    else s[e % TK][e / TK] = r[i];
  }
}

// C_z (=, or += when `accumulate`) sum_{s < nsum} op(A_{z*nsum+s}) · op(B_{z*nsum+s}), all row-major, where op(A)
// is M x K (stored K x M when trans_a) and op(B) is K x N (stored N x K when trans_b). Batch item i of A starts at
// A + i*stride_a (0 broadcasts one matrix), likewise B; C_z starts at C + z*stride_c. Summing `nsum` products in
// one block gives a batch reduction (conv weight gradients) in a fixed order, without atomics.
//
// The nsum * CEIL_DIV(K, TK) stages of one C tile form one sequence (item-major). With splits > 1 it is cut into
// `splits` contiguous runs, run c = [S*c/splits, S*(c+1)/splits) of the S stages, one per block: blockIdx.z =
// z*splits + c, and the block writes its partial sum to C + blockIdx.z*stride_c (a workspace; sgemm_sum_splits
// adds the partials in order). The cut depends only on the shapes and `splits`, so the result is the same on every
// run.
//
// Pipeline: two shared stages; while the block multiplies stage t out of one, each thread's global loads for stage
// t + 1 are already in flight into registers, and are stored into the other after the multiply. One barrier per
// stage: the buffer written in iteration t was last read in iteration t - 1, before that iteration's barrier.
// Launch: grid (CEIL_DIV(N, 64), CEIL_DIV(M, 64), batches * splits), block 256, no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(256)
sgemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
      int trans_a, int trans_b, long long stride_a, long long stride_b, long long stride_c, int nsum, int splits,
      int accumulate) {
  __shared__ float As[2][TK][TP];
  __shared__ float Bs[2][TK][TP];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
  const int z = blockIdx.z / splits, part = blockIdx.z % splits;
  const int ktiles = CEIL_DIV(K, TK);
  const long long stages = (long long)nsum * ktiles;
  const long long first = stages * part / splits, last = stages * (part + 1) / splits;
  // A non-transposed is m-major (contiguous in k); B non-transposed is k-major (contiguous in n).
  const int a_kmajor = trans_a, b_kmajor = !trans_b;
  float ra[4], rb[4];
  auto fetch = [&](long long t) {
    const long long item = (long long)z * nsum + t / ktiles;
    const int k0 = (int)(t % ktiles) * TK;
    load_tile(ra, A + item * stride_a, a_kmajor, M, K, m0, k0, tid);
    load_tile(rb, B + item * stride_b, b_kmajor, N, K, n0, k0, tid);
  };
  float acc[4][4] = {};
  if (first < last) {
    fetch(first);
    store_tile(As[0], ra, a_kmajor, tid);
    store_tile(Bs[0], rb, b_kmajor, tid);
  }
  __syncthreads();
  for (long long t = first; t < last; t++) {
    const int cur = (int)((t - first) & 1);
    const bool more = t + 1 < last;
    if (more) fetch(t + 1);
#pragma unroll
    for (int kk = 0; kk < TK; kk++) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) { av[i] = As[cur][kk][ty + 16 * i]; bv[i] = Bs[cur][kk][tx + 16 * i]; }
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
    }
    if (more) {
      store_tile(As[cur ^ 1], ra, a_kmajor, tid);
      store_tile(Bs[cur ^ 1], rb, b_kmajor, tid);
    }
    __syncthreads();
  }
  float* c = C + (long long)blockIdx.z * stride_c;
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) {
        float* dst = c + (long long)m * N + n;
        *dst = accumulate ? *dst + acc[i][j] : acc[i][j];
      }
    }
}

// The second pass of a split sgemm: C_z (=, or += when `accumulate`) sum_{c < splits} P[z*splits + c], adding the
// partials in order c = 0, 1, ... (the same bits on every run). P holds batches*splits matrices of mn words each,
// back to back; C_z starts at C + z*stride_c. Launch: grid-stride over batches * mn, block 256.
extern "C" __global__ void __launch_bounds__(BLOCK)
sgemm_sum_splits(const float* __restrict__ P, float* __restrict__ C, long long mn, int batches, int splits,
                 long long stride_c, int accumulate) {
  GRID_STRIDE(e, (long long)batches * mn) {
    const long long z = e / mn, r = e % mn;
    const float* p = P + z * splits * mn + r;
    float s = p[0];
    for (int c = 1; c < splits; c++) s += p[c * mn];
    float* dst = C + z * stride_c + r;
    *dst = accumulate ? *dst + s : s;
  }
}
