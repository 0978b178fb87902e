// conv_mma.cu: convolutions as implicit GEMMs on the tensor cores (mma.sync m16n8k16, bf16 operands, f32
// accumulators), for Precision::Bf16. No column matrix is ever stored: each block gathers its tile of the im2col
// matrix straight from a channels-last (NHWC) bf16 copy of the activation, 16 bytes (8 channels) per cp.async.
//
// Two GEMM kernels cover conv2d, conv_transpose2d (its adjoint) and both of their gradients:
// - conv_gather_mma: out[i, q, o] = sum over taps (ky, kx) and channels c of in[i, src(q, tap), c] * wp[o][tap][c],
//   where src is the conv's own map (iy = qy*S - P + ky) or its adjoint's (qy = iy*S - P + ky, solved for iy, so
//   only taps with S | qy + P - ky contribute: a strided adjoint runs each class of output pixels by position mod S
//   as its own GEMM over the taps it reads). conv forward and transposed-conv dgrad use the first, conv dgrad and
//   transposed-conv forward the second; only the packed weight differs.
// - conv_wgrad_mma: part[s][m][tap][c] = sum over the pixels r of split s of a[r][m] * b[src(r, tap)][c], the
//   weight gradient as a split-K over the batch's pixels (fixed partition), each tile's splits summed in order by
//   the tile's last block: no atomics on the values, the same bits every run.
// The GEMMs read channels 8 at a time (one 16-byte copy), so the NHWC copies and the packed weights pad every
// channel count to a multiple of 8 with zeros: the 1-channel input and output convs then cost 8x their few
// FLOPs, far less than the f32 path's column matrix would (scripts/conv-cost.py).
#include "common.cuh"

// Block tile: BM x BN outputs, BK-deep stages, STAGES-deep cp.async pipeline, 4 warps in a 2 x 2 grid, each
// warp a 32 x 32 tile (2 x 4 mma tiles). Shared-memory rows are padded by 8 bf16 (16 bytes) so that the 8 rows an
// ldmatrix reads fall in distinct banks (row stride 80 bytes = 20 words: rows start at banks 0, 20, 8, 28, ...).
#define BM 64
#define BN 64
#define BK 32
#define STAGES 3
#define PAD 8
#define MMA_THREADS 128

// One stage of one operand: 64 rows of BK (+PAD) bf16, or BK rows of 64 (+PAD).
#define ROW_TILE (BM * (BK + PAD))
#define COL_TILE (BK * (BM + PAD))

// The pixel of the gathered tensor that output pixel (qy, qx) reads through tap (ky, kx); false when it lies in
// the zero padding or (adjoint) between the strided positions.
static __device__ __forceinline__ bool conv_source(int adjoint, int qy, int qx, int ky, int kx, int S, int P,
                                                   int IH, int IW, int* iy, int* ix) {
  if (!adjoint) {
    *iy = qy * S - P + ky;
    *ix = qx * S - P + kx;
  } else {
    const int ty = qy + P - ky, tx = qx + P - kx;
    if (ty < 0 || tx < 0 || ty % S != 0 || tx % S != 0) return false;
    *iy = ty / S;
    *ix = tx / S;
  }
  return *iy >= 0 && *iy < IH && *ix >= 0 && *ix < IW;
}

// The multistage main loop of both GEMMs: k-tile after k-tile through STAGES shared-memory stages, STAGES-1 tiles
// in flight. `load(stage, kt)` issues the cp.async copies of k-tile kt into a stage, `compute(stage)` multiplies
// a stage that has landed. Before each prefetch, a wait leaves at most STAGES-2 newer groups in flight (so tile kt
// has landed) and a barrier makes every thread's copies visible and ensures all are done with tile kt-1, whose
// stage the prefetch overwrites. A group is committed every iteration, empty or not, so the count stays exact.
template <class Load, class Compute>
static __device__ __forceinline__ void mma_pipeline(int ktiles, Load load, Compute compute) {
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < ktiles) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; kt++) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    if (kt + STAGES - 1 < ktiles) load((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cp_async_commit();
    compute(kt % STAGES);
  }
  cp_async_wait<0>();
}

// One BK-deep stage of a warp's 32 x 32 output tile at (wm, wn): acc += A·B over the stage. The tiles are stored
// with rows `ld` bf16 apart, either row-major (A as [m][k], B as [n][k]; DEPTH_MAJOR false, read with ldmatrix) or
// depth-major (A as [k][m], B as [k][n]; true, read with ldmatrix .trans, which transposes each 8x8 matrix). Lane
// l addresses row l & 7 of 8x8 matrix l >> 3: for A, matrices (m 0-7 | 8-15) x (k 0-7 | 8-15) in a0..a3 order; for
// B, two n8 tiles per ldmatrix_x4: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
// Only the mma tiles (a, b) whose bit a*4 + b is set in `live` (live_tiles) are multiplied: a layer with few output
// channels (the UNet's 1-channel output conv, a weight gradient of 8 rows) skips the tiles of padding. `live`
// depends on the warp only, so a warp's lanes agree, as mma.sync needs.
// The mma tiles of a warp's 32 x 32 tile that hold some of the GEMM, as warp_tile_mma's `live` bits, for `rows`
// and `cols` of the GEMM left from the warp tile's corner.
static __device__ __forceinline__ unsigned live_tiles(long long rows, int cols) {
  unsigned live = 0;
#pragma unroll
  for (int a = 0; a < 2; a++)
#pragma unroll
    for (int b = 0; b < 4; b++)
      if (a * 16 < rows && b * 8 < cols) live |= 1u << (a * 4 + b);
  return live;
}

template <bool DEPTH_MAJOR>
static __device__ __forceinline__ void warp_tile_mma(float acc[2][4][4], const bf16* at, const bf16* bt, int ld,
                                                     int wm, int wn, int lane, unsigned live) {
  const int j = lane >> 3, r = lane & 7;
  // This lane's row of the 8x8 matrix whose top-left element is (mn, k) of a tile.
  auto row = [&](const bf16* tile, int mn, int k) {
    return DEPTH_MAJOR ? tile + (k + r) * ld + mn : tile + (mn + r) * ld + k;
  };
  auto ldsm = [](unsigned f[4], const bf16* p) { DEPTH_MAJOR ? ldmatrix_x4_trans(f, p) : ldmatrix_x4(f, p); };
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    unsigned af[2][4], bfr[4][2];
#pragma unroll
    for (int a = 0; a < 2; a++) ldsm(af[a], row(at, wm * 32 + a * 16 + (j & 1) * 8, kk + (j >> 1) * 8));
#pragma unroll
    for (int b = 0; b < 4; b += 2) {
      unsigned f[4];
      ldsm(f, row(bt, wn * 32 + b * 8 + (j >> 1) * 8, kk + (j & 1) * 8));
      bfr[b][0] = f[0];
      bfr[b][1] = f[1];
      bfr[b + 1][0] = f[2];
      bfr[b + 1][1] = f[3];
    }
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
      for (int b = 0; b < 4; b++)
        if (live >> (a * 4 + b) & 1) mma_bf16_16816(acc[a][b], af[a], bfr[b], acc[a][b]);
  }
}

// y[i][p][c] = bf16(x[i][c][p]) for c < C and 0 for C <= c < CP, for x: [n, C, HW] f32 and y: [n, HW, CP] bf16:
// channels padded to CP (a multiple of 8) so that every pixel's channels are whole 16-byte copies. 32 x 32 tiles
// transposed through shared memory, so both the reads (along p) and the writes (along c) are coalesced; block
// (x, y, i) converts the tiles x, x + gridDim.x, ... of channels 32y.. of image i. Also converts a row-major [n, C]
// matrix (HW = 1). When `sums` is not null, each block also writes its channels' f32 sums over its pixels,
// sums[x][i][c] for c < C ([gridDim.x, n, C]), in a fixed order (each thread adds its pixel column's values tile
// after tile, then a warp's butterfly adds the columns): a gradient converted for the GEMMs yields its bias
// gradients without another pass over it. Launch: grid (<= CEIL_DIV(HW, 32), CEIL_DIV(CP, 32), n), block (32, 32).
extern "C" __global__ void __launch_bounds__(1024)
nchw_to_nhwc_bf16(const float* __restrict__ x, bf16* __restrict__ y, float* __restrict__ sums, int C, int CP,
                  int HW) {
  __shared__ float tile[32][33];
  const long long img = blockIdx.z;
  const int c0 = blockIdx.y * 32, tx = threadIdx.x, ty = threadIdx.y;
  float s = 0.0f;
  for (int p0 = blockIdx.x * 32; p0 < HW; p0 += gridDim.x * 32) {
    // Thread (tx, ty) reads channel c0 + ty at pixel p0 + tx, and writes pixel p0 + ty at channel c0 + tx.
    const int c = c0 + ty, p = p0 + tx;
    const float v = c < C && p < HW ? x[(img * C + c) * HW + p] : 0.0f;
    s += v;
    tile[ty][tx] = v;
    __syncthreads();
    const int pw = p0 + ty, cw = c0 + tx;
    if (cw < CP && pw < HW) y[(img * HW + pw) * CP + cw] = f32_to_bf16(tile[tx][ty]);
    __syncthreads();  // the tile is overwritten next
  }
  if (!sums) return;
  s = warp_sum(s);  // warp ty holds channel c0 + ty, one pixel column per lane
  if (tx == 0 && c0 + ty < C) sums[((long long)blockIdx.x * gridDim.z + img) * C + c0 + ty] = s;
}

// dst[o][tap][c] = w as the bf16 GEMM operand for o < O, c < CP = C rounded up to 8 (channels padded with zeros, as
// nchw_to_nhwc_bf16 pads the activation): w is [O, C, KK] (o first) when `swap` is 0, [C, O, KK] when it is 1. The
// grid-stride loop of the blocks along x.
static __device__ __forceinline__ void pack_operand(const float* __restrict__ w, bf16* __restrict__ dst, int O, int C,
                                                    int KK, int swap) {
  const int CP = CEIL_DIV(C, 8) * 8;
  GRID_STRIDE(e, (long long)O * KK * CP) {
    const int c = e % CP, tap = e / CP % KK, o = e / CP / KK;
    const long long src = swap ? ((long long)c * O + o) * KK + tap : ((long long)o * C + c) * KK + tap;
    dst[e] = c < C ? f32_to_bf16(w[src]) : (bf16)0;
  }
}

// The weight w (a conv's [out, in, k*k], a transposed conv's [in, out, k*k]) as the bf16 GEMM operand
// wp[o][tap][c] (pack_operand; w is [O, C, KK] when `swap` is 0, [C, O, KK] when it is 1). When wp_adj is not null,
// the blocks with blockIdx.y = 1 write the operand of the adjoint GEMM from the same w, wp_adj[c][tap][o] for
// c < C, o < OP = O rounded up to 8 (O and C exchanged, `swap` flipped): a conv's forward packs its weight for the
// input gradient in the same launch. Launch: grid (grid-stride over the larger operand, wp_adj ? 2 : 1).
extern "C" __global__ void pack_weight_bf16(const float* __restrict__ w, bf16* __restrict__ wp,
                                            bf16* __restrict__ wp_adj, int O, int C, int KK, int swap) {
  if (blockIdx.y == 1) pack_operand(w, wp_adj, C, O, KK, !swap);
  else pack_operand(w, wp, O, C, KK, swap);
}

// Every weight of a parameter arena (4-D, or a linear layer's 2-D as KK = 1) packed both ways in one launch: segment s (blockIdx.y) is the row
// table[6s .. 6s+5] = (offset of w [A, B, KK] in `params`, A, B, KK, offset in `packed` of its [A][tap][B] operand,
// offset of its [B][tap][A] one); blockIdx.z picks the operand. A conv's forward reads the first and its input
// gradient the second; a transposed conv the other way round. Launch: grid (grid-stride, segments, 2).
extern "C" __global__ void pack_weights_bf16(const float* __restrict__ params, bf16* __restrict__ packed,
                                             const int* __restrict__ table) {
  const int* row = table + 6 * blockIdx.y;
  const float* w = params + row[0];
  if (blockIdx.z == 0) pack_operand(w, packed + row[4], row[1], row[2], row[3], 0);
  else pack_operand(w, packed + row[5], row[2], row[1], row[3], 1);
}

// out[i][o][q] (=, or += when `accumulate`) sum_{tap, c} in[i][src(q, tap)][c] * wp[o][tap][c], plus bias[o],
// chan_bias[i * cb_stride + o] (columns of a wider matrix) and residual[i][o][q] (shaped like out) when given.
// in: [n, IH, IW, C] bf16 (NHWC), wp: [N, K*K, C] bf16, out: [n, N, QH*QW] f32 (NCHW). C % 8 == 0 (padded). When
// out_nhwc is given, the result is also written there as bf16 [n, QH*QW, NP] (NP: N rounded up to 8, the padding
// 0): the operand of a conv that reads this one's output, with no conversion launch; when act_out is given, the
// activation act_kind (UNARY_*) of the result is written there, and the operand holds it instead (a linear layer
// followed by its activation). When col_sums is given, each block also writes the column sums of the results it
// wrote (over its rows, 0 for a block with none) as row blockIdx.z * gridDim.y + blockIdx.y of col_sums [rows, N]:
// sums whose columns add up to the output's channel sums (what a bias gradient is, when the output is a conv's
// output gradient), in a fixed order. The GEMM: rows = output pixels, columns = the N output channels, depth = taps
// x C.
// A strided adjoint (S > 1: a transposed conv's forward, a strided conv's input gradient) reads through tap
// (ky, kx) only at the output pixels with S | qy + P - ky and S | qx + P - kx, a quarter of the taps for S = 2. So
// its output pixels are split into the S x S classes of (qy + P) mod S and (qx + P) mod S, one per blockIdx.z:
// within class (ry, rx) every pixel reads exactly the taps ky = ry + S*j, kx = rx + S*l, and the class's GEMM has
// depth ceil((K-ry)/S) * ceil((K-rx)/S) * C instead of K*K*C. Otherwise one class: every pixel, every tap.
// Launch: grid (CEIL_DIV(N, 64), CEIL_DIV(largest class's n * pixels, 64), S*S for a strided adjoint else 1), block
// 128, dynamic shared memory STAGES * 2 * ROW_TILE * 2 bytes (30 KiB).
extern "C" __global__ void __launch_bounds__(MMA_THREADS)
conv_gather_mma(const bf16* __restrict__ in, const bf16* __restrict__ wp, float* __restrict__ out,
                const float* __restrict__ bias, const float* __restrict__ chan_bias,
                const float* __restrict__ residual, bf16* __restrict__ out_nhwc, float* __restrict__ col_sums, int n,
                int C, int IH, int IW, int N, int NP, int QH, int QW, int K, int S, int P, int adjoint,
                int accumulate, int cb_stride, float* __restrict__ act_out, int act_kind) {
  DYN_SHARED(bf16, smem);
  bf16* As = smem;                     // [STAGES][BM][BK + PAD]: rows = output pixels
  bf16* Bs = smem + STAGES * ROW_TILE;  // [STAGES][BN][BK + PAD]: rows = output channels
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
  // This block's class: its first output row and column (qy0, qx0), the step between its rows and columns (ts),
  // its size (CH x CW pixels per image), its first taps (ky0, kx0), the step between its taps (ts again) and its
  // tap counts (KY x KX).
  const bool classes = adjoint && S > 1;
  const int ts = classes ? S : 1, ry = classes ? (int)blockIdx.z / S : 0, rx = classes ? (int)blockIdx.z % S : 0;
  const int qy0 = classes ? ((ry - P) % S + S) % S : 0, qx0 = classes ? ((rx - P) % S + S) % S : 0;
  const int CH = qy0 < QH ? CEIL_DIV(QH - qy0, ts) : 0, CW = qx0 < QW ? CEIL_DIV(QW - qx0, ts) : 0;
  const int KY = ry < K ? CEIL_DIV(K - ry, ts) : 0, KX = rx < K ? CEIL_DIV(K - rx, ts) : 0;
  const long long Q = (long long)QH * QW, CQ = (long long)CH * CW, rows = n * CQ;
  const int wdepth = K * K * C, depth = KY * KX * C;
  const long long m0 = (long long)blockIdx.y * BM;
  const int n0 = blockIdx.x * BN;
  float* sums_row = col_sums ? col_sums + ((long long)blockIdx.z * gridDim.y + blockIdx.y) * N : nullptr;
  if (m0 >= rows) {
    // A smaller class than the grid was sized for: the whole block, before any barrier (its sums are 0).
    if (sums_row && tid < BN && n0 + tid < N) sums_row[n0 + tid] = 0.0f;
    return;
  }
  const int ktiles = CEIL_DIV(depth, BK);

  // Stage `st` <- the next k-tile: 64 rows x 4 chunks of 8 bf16 per operand. Thread `tid` copies rows
  // (tid >> 2) and (tid >> 2) + 32 of both tiles, at columns kc..kc+7 of every k-tile, so its rows' pixel
  // coordinates are worked out once, and its column's (tap, channel) advance by BK per k-tile without a division
  // (mma_pipeline loads the k-tiles in order, each once).
  const int kc = (tid & 3) * 8;
  const bf16* img[2];
  int qy[2], qx[2];
  bool row_ok[2];
#pragma unroll
  for (int h = 0; h < 2; h++) {
    const long long m = m0 + (tid >> 2) + 32 * h;
    row_ok[h] = m < rows;
    const long long i = row_ok[h] ? m / CQ : 0;
    const int q = row_ok[h] ? (int)(m - i * CQ) : 0, a = q / (CW > 0 ? CW : 1);
    qy[h] = qy0 + ts * a;
    qx[h] = qx0 + ts * (q - a * CW);
    img[h] = in + i * IH * IW * C;
  }
  // Column kc's depth index k, channel c and tap (ty, tx) of the class's KY x KX.
  int k = kc, c = kc % C, ty = KX > 0 ? kc / C / KX : 0, tx = KX > 0 ? kc / C % KX : 0;
  auto load = [&](int st, int) {
    const int ky = ry + ts * ty, kx = rx + ts * tx;
    const long long wk = (long long)(ky * K + kx) * C + c;  // the same (tap, channel) in the packed weight
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int r = (tid >> 2) + 32 * h;
      // A: output pixel m0 + r through tap (ky, kx).
      const bf16* src = in;
      int bytes = 0, iy, ix;
      if (row_ok[h] && k < depth && conv_source(adjoint, qy[h], qx[h], ky, kx, S, P, IH, IW, &iy, &ix)) {
        src = img[h] + ((long long)iy * IW + ix) * C + c;
        bytes = 16;
      }
      cp_async_16(As + st * ROW_TILE + r * (BK + PAD) + kc, src, bytes);
      // B: output channel n0 + r.
      const int o = n0 + r;
      const bool ok = o < N && k < depth;
      cp_async_16(Bs + st * ROW_TILE + r * (BK + PAD) + kc, ok ? wp + (long long)o * wdepth + wk : wp, ok ? 16 : 0);
    }
    k += BK;
    for (c += BK; c >= C; c -= C) {
      if (++tx == KX) {
        tx = 0;
        ty++;
      }
    }
  };

  // This warp's share of the GEMM: rows (output pixels) and columns (output channels) from its tile's corner.
  const unsigned live = live_tiles(rows - m0 - wm * 32, N - n0 - wn * 32);
  float acc[2][4][4] = {};
  mma_pipeline(ktiles, load, [&](int st) {
    warp_tile_mma<false>(acc, As + st * ROW_TILE, Bs + st * ROW_TILE, BK + PAD, wm, wn, lane, live);
  });

  // Epilogue: accumulator (a, b, v) holds row g (+8 for v >= 2), column 2t (+1 for odd v) of mma tile (a, b).
  const int g = lane >> 2, t = lane & 3;
  float cs[4][2] = {};  // this thread's sums of its columns (b, v & 1) over its rows
#pragma unroll
  for (int a = 0; a < 2; a++)
#pragma unroll
    for (int v = 0; v < 4; v++) {
      const long long m = m0 + wm * 32 + a * 16 + g + (v >= 2 ? 8 : 0);
      if (m >= rows) continue;
      const long long i = m / CQ;
      const int cq = (int)(m - i * CQ), cy = cq / CW;
      const long long q = (long long)(qy0 + ts * cy) * QW + qx0 + ts * (cq - cy * CW);
#pragma unroll
      for (int b = 0; b < 4; b++) {
        const int o = n0 + wn * 32 + b * 8 + 2 * t + (v & 1);
        if (o >= N) {
          if (out_nhwc && o < NP) out_nhwc[(i * Q + q) * NP + o] = (bf16)0;
          continue;
        }
        const long long at = (i * N + o) * Q + q;
        const float extra = (bias ? bias[o] : 0.0f) + (chan_bias ? chan_bias[i * cb_stride + o] : 0.0f);
        const float val = acc[a][b][v] + extra;
        const float res = accumulate ? out[at] + val : residual ? residual[at] + val : val;
        out[at] = res;
        const float y = act_out ? unary_apply(act_kind, res) : res;
        if (act_out) act_out[at] = y;
        if (out_nhwc) out_nhwc[(i * Q + q) * NP + o] = f32_to_bf16(y);
        cs[b][v & 1] += res;
      }
    }
  if (!sums_row) return;
  // Over the warp's rows (the 8 lanes of each t), then the block's two row halves through shared memory (the
  // pipeline's, free once every warp is past its last k-tile).
  float* part = reinterpret_cast<float*>(smem);  // [2 row halves][BN]
#pragma unroll
  for (int b = 0; b < 4; b++)
#pragma unroll
    for (int p = 0; p < 2; p++) {
      float v = cs[b][p];
      for (int off = 4; off < 32; off <<= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      cs[b][p] = v;
    }
  __syncthreads();
  if (g == 0)
#pragma unroll
    for (int b = 0; b < 4; b++)
#pragma unroll
      for (int p = 0; p < 2; p++) part[wm * BN + wn * 32 + b * 8 + 2 * t + p] = cs[b][p];
  __syncthreads();
  if (tid < BN && n0 + tid < N) sums_row[n0 + tid] = part[tid] + part[BN + tid];
}

// dw[m][c][tap] = sum over the batch's pixels r of a[r][m] * b[i(r)][src(q(r), tap)][c], the conv's own map src
// (iy = qy*S - P + ky), for m < MR, c < CR: a conv's [out, in, k*k] weight gradient (m = out) or a transposed
// conv's [in, out, k*k] (m = in). a: [n, QH, QW, M] bf16, b: [n, IH, IW, C] bf16, M and C the padded counts
// (multiples of 8). A split-K over the pixels: block z covers pixels [z*per, min((z+1)*per, n*QH*QW)), per a
// multiple of BK, and writes its tile's partial sums to part[z][m][tap][c] ([splits, M, K*K*C] f32). The last
// block to finish a tile (counted on tickets[tile], 0 between launches and set back to 0 by that block) adds the
// splits in order, so the same bits every run whichever block is last, with no atomics on the values. The GEMM:
// rows = M, columns = K*K*C, depth = the split's pixels; both operands are stored depth-major, so their fragments
// come through ldmatrix .trans. When db is given, the last block of tile 0 also sums the bias gradient,
// db[j] = sum_{r < rows} bias_part[r][j] for j < B (rows in order, as sum_rows adds them): one conv's backward
// reductions cost no launch of their own. Launch: grid (CEIL_DIV(K*K*C, 64), CEIL_DIV(M, 64), splits), block 128,
// dynamic shared memory STAGES * 2 * COL_TILE * 2 bytes (27 KiB).
extern "C" __global__ void __launch_bounds__(MMA_THREADS)
conv_wgrad_mma(const bf16* __restrict__ a, const bf16* __restrict__ b, float* part, float* __restrict__ dw,
               int* tickets, const float* __restrict__ bias_part, float* __restrict__ db, int n, int M, int C, int MR,
               int CR, int IH, int IW, int QH, int QW, int K, int S, int P, int per, int rows, int B) {
  DYN_SHARED(bf16, smem);
  bf16* As = smem;                     // [STAGES][BK][BM + PAD]: rows = pixels, columns = m
  bf16* Bs = smem + STAGES * COL_TILE;  // [STAGES][BK][BN + PAD]: rows = pixels, columns = (tap, c)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
  const long long Q = (long long)QH * QW, pixels = n * Q;
  const int width = K * K * C;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const long long r0 = (long long)blockIdx.z * per;
  const long long r1 = r0 + per < pixels ? r0 + per : pixels;
  const int ktiles = r1 > r0 ? (int)CEIL_DIV(r1 - r0, BK) : 0;

  // Stage `st` <- pixels r0 + kt*BK ..: 32 rows x 8 chunks of 8 bf16 per operand. Thread `tid` copies rows
  // (tid >> 3) and (tid >> 3) + 16 at columns cc..cc+7, the same columns in every k-tile, so the column's m, tap
  // and channel are worked out once.
  const int cc = (tid & 7) * 8, m = m0 + cc, col = n0 + cc;
  const bool m_ok = m < M, col_ok = col < width;
  const int tap = col_ok ? col / C : 0, c = col - tap * C, ky = tap / K, kx = tap - ky * K;
  auto load = [&](int st, int kt) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int rr = (tid >> 3) + 16 * h;
      const long long r = r0 + (long long)kt * BK + rr;
      const bool pix = r < r1;
      cp_async_16(As + st * COL_TILE + rr * (BM + PAD) + cc, pix && m_ok ? a + r * M + m : a, pix && m_ok ? 16 : 0);
      const bf16* src = b;
      int bytes = 0;
      if (pix && col_ok) {
        const long long i = r / Q;
        const int q = (int)(r - i * Q), qy = q / QW, qx = q - qy * QW;
        int iy, ix;
        if (conv_source(0, qy, qx, ky, kx, S, P, IH, IW, &iy, &ix)) {
          src = b + ((i * IH + iy) * IW + ix) * C + c;
          bytes = 16;
        }
      }
      cp_async_16(Bs + st * COL_TILE + rr * (BN + PAD) + cc, src, bytes);
    }
  };

  // This warp's share of the GEMM: rows (m) and columns (tap, channel) from its tile's corner.
  const unsigned live = live_tiles(M - m0 - wm * 32, width - n0 - wn * 32);
  float acc[2][4][4] = {};
  mma_pipeline(ktiles, load, [&](int st) {
    warp_tile_mma<true>(acc, As + st * COL_TILE, Bs + st * COL_TILE, BM + PAD, wm, wn, lane, live);
  });

  const int g = lane >> 2, t = lane & 3;
  const long long split = (long long)M * width;
  float* p = part + blockIdx.z * split;
#pragma unroll
  for (int x = 0; x < 2; x++)
#pragma unroll
    for (int v = 0; v < 4; v++) {
      const int m = m0 + wm * 32 + x * 16 + g + (v >= 2 ? 8 : 0);
      if (m >= M) continue;
#pragma unroll
      for (int y = 0; y < 4; y++) {
        const int col = n0 + wn * 32 + y * 8 + 2 * t + (v & 1);
        if (col < width) p[(long long)m * width + col] = acc[x][y][v];
      }
    }

  // Every thread's partials are visible device-wide before the block takes its ticket (each thread fences its own
  // writes; the barrier orders them before thread 0's atomic, and thread 0's answer before the others read it).
  __shared__ int last[1];
  const int tile = blockIdx.y * gridDim.x + blockIdx.x;
  __threadfence();
  __syncthreads();
  if (tid == 0) last[0] = atomicAdd(tickets + tile, 1) == (int)gridDim.z - 1;
  __syncthreads();
  if (!last[0]) return;
  __threadfence();
  const int KK = K * K;
  const volatile float* pv = part;  // other blocks' partials: read past the (incoherent) L1
  for (int e = tid; e < BM * BN; e += MMA_THREADS) {
    const int m = m0 + e / BN, col = n0 + e % BN, tp = col / C, c = col - tp * C;
    if (m >= MR || col >= width || c >= CR) continue;
    const long long at = (long long)m * width + col;
    float s = 0.0f;
    for (int z = 0; z < (int)gridDim.z; z++) s += pv[z * split + at];
    dw[((long long)m * CR + c) * KK + tp] = s;
  }
  if (tid == 0) tickets[tile] = 0;
  if (!db || tile != 0) return;
  for (int j = tid; j < B; j += MMA_THREADS) {
    float s = 0.0f;
    for (int r = 0; r < rows; r++) s += bias_part[(long long)r * B + j];
    db[j] = s;
  }
}
