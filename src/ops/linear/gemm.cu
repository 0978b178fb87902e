// gemm.cu: single-precision matrix multiply, the workhorse of conv, conv-transpose and linear layers.
#include "common.cuh"

// Tile of C per block (TM x TN), depth of one shared-memory stage (TK), and the 16x16 thread layout in which each
// thread owns a 4x4 sub-tile spread with stride 16 (so neighbouring threads touch neighbouring columns).
#define TM 64
#define TN 64
#define TK 16

// C_z (=, or += when `accumulate`) sum_{s < nsum} op(A_{z*nsum+s}) · op(B_{z*nsum+s}), all row-major, where op(A)
// is M x K (stored K x M when trans_a) and op(B) is K x N (stored N x K when trans_b). Batch item i of A starts at
// A + i*stride_a (0 broadcasts one matrix), likewise B; C_z starts at C + z*stride_c. Summing `nsum` products in
// one block gives a batch reduction (conv weight gradients) in a fixed order, without atomics.
// Launch: grid (CEIL_DIV(N, 64), CEIL_DIV(M, 64), batches), block 256, no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(256)
sgemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K,
      int trans_a, int trans_b, long long stride_a, long long stride_b, long long stride_c, int nsum,
      int accumulate) {
  __shared__ float As[TK][TM];
  __shared__ float Bs[TK][TN];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
  float acc[4][4] = {};
  for (int s = 0; s < nsum; s++) {
    const long long item = (long long)blockIdx.z * nsum + s;
    const float* a = A + item * stride_a;
    const float* b = B + item * stride_b;
    for (int k0 = 0; k0 < K; k0 += TK) {
      // Stage a TK-deep slice of both operands; out-of-range entries are 0 so the product needs no bounds checks.
#pragma unroll
      for (int r = 0; r < TK * TM / 256; r++) {
        const int e = tid + 256 * r, kk = e / TM, mm = e % TM, m = m0 + mm, k = k0 + kk;
        As[kk][mm] = (m < M && k < K) ? (trans_a ? a[(long long)k * M + m] : a[(long long)m * K + k]) : 0.0f;
        const int n = n0 + mm;
        Bs[kk][mm] = (n < N && k < K) ? (trans_b ? b[(long long)n * K + k] : b[(long long)k * N + n]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < TK; kk++) {
        float av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; i++) { av[i] = As[kk][ty + 16 * i]; bv[i] = Bs[kk][tx + 16 * i]; }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
      }
      __syncthreads();  // the next stage overwrites As/Bs
    }
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
