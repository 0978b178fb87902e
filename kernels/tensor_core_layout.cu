// tensor_core_layout.cu: one-warp kernels that check the tensor-core helpers of common.cuh against the PTX ISA's
// fragment layouts (tests/tensor_core_layout.rs computes the expected values on the host from the ISA's
// description). Unlike selftest.cu these are correct kernels, meant to run on a GPU as well as on the emulator, so
// the emulator's semantics and the hardware's can be compared. Launch each with grid 1, block 32.
#include "common.cuh"

// D = A·B + C with one mma_bf16_16816: A 16x16 and B 16x8 row-major f32 (rounded to bf16 here), C and D 16x8
// row-major f32. Each lane loads its fragments as the layout comment in common.cuh says.
extern "C" __global__ void tc_layout_mma(const float* a, const float* b, const float* c, float* d) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned fa[4], fb[2];
  float fc[4], fd[4];
  for (int i = 0; i < 4; i++) {
    const int row = g + 8 * (i & 1), col = 2 * t + 8 * (i >> 1);
    fa[i] = pack_bf16x2(a[row * 16 + col], a[row * 16 + col + 1]);
  }
  for (int i = 0; i < 2; i++) {
    const int k = 2 * t + 8 * i;
    fb[i] = pack_bf16x2(b[k * 8 + g], b[(k + 1) * 8 + g]);
  }
  for (int i = 0; i < 4; i++) fc[i] = c[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  mma_bf16_16816(fd, fa, fb, fc);
  for (int i = 0; i < 4; i++) d[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = fd[i];
}

// One mma_bf16_16816 on fragments the host packed: lane l takes a[0..3] = frag[6l..6l+3], b[0..1] =
// frag[6l+4..6l+5] (register bits, passed as floats: an int buffer holds indices only) and c[0..3] = c[4l..4l+3],
// and writes its d[0..3] to d[4l..4l+3]. The host places every element by the ISA's layout, so this checks the
// instruction's layout without the packing code of tc_layout_mma.
extern "C" __global__ void tc_layout_mma_fragments(const float* frag, const float* c, float* d) {
  const int lane = threadIdx.x & 31;
  unsigned fa[4], fb[2];
  float fc[4], fd[4];
  for (int i = 0; i < 4; i++) fa[i] = __float_as_uint(frag[6 * lane + i]);
  for (int i = 0; i < 2; i++) fb[i] = __float_as_uint(frag[6 * lane + 4 + i]);
  for (int i = 0; i < 4; i++) fc[i] = c[4 * lane + i];
  mma_bf16_16816(fd, fa, fb, fc);
  for (int i = 0; i < 4; i++) d[4 * lane + i] = fd[i];
}

// ldmatrix of `count` (1, 2 or 4) 8x8 bf16 matrices, transposed when `trans` != 0. `src` holds 4 matrices of 8x8
// f32, matrix-major then row-major. They go to dynamic shared memory (1024 bytes) as bf16, row r of matrix i at
// row 4r + i of a 32x16 tile, columns 8..15, so each lane's address matters. out[lane * 4 + i] gets register i of
// the lane (0 past `count`).
extern "C" __global__ void tc_layout_ldmatrix(const float* src, int* out, int count, int trans) {
  DYN_SHARED(bf16, htile);  // one type per `extern __shared__` name in a file: `tile` is a float array
  const int lane = threadIdx.x & 31, i = lane >> 3, r = lane & 7;
  bf16* row = htile + (4 * r + i) * 16 + 8;
  for (int j = 0; j < 8; j++) row[j] = f32_to_bf16(src[(i * 8 + r) * 8 + j]);
  __syncthreads();
  unsigned reg[4] = {0, 0, 0, 0};
  if (count == 1) {
    if (trans) ldmatrix_x1_trans(reg, row);
    else ldmatrix_x1(reg, row);
  } else if (count == 2) {
    if (trans) ldmatrix_x2_trans(reg, row);
    else ldmatrix_x2(reg, row);
  } else {
    if (trans) ldmatrix_x4_trans(reg, row);
    else ldmatrix_x4(reg, row);
  }
  for (int j = 0; j < 4; j++) out[lane * 4 + j] = (int)reg[j];
}

// cp.async of 32 16-byte chunks of `src` (128 floats) into dynamic shared memory (512 bytes): lane l copies chunk l
// into slot l ^ 5 in two commit groups (lanes 0-15, then 16-31), zero-filling it (src_bytes 0) when bit l of
// `zero_mask` is set. After cp_async_wait<0>() and a barrier, lane l writes out slot l, which another lane copied.
extern "C" __global__ void tc_layout_cp_async(const float* src, float* out, int zero_mask) {
  DYN_SHARED(float, tile);
  const int lane = threadIdx.x & 31;
  if (lane < 16) cp_async_16(tile + 4 * (lane ^ 5), src + 4 * lane, (zero_mask >> lane) & 1 ? 0 : 16);
  cp_async_commit();
  if (lane >= 16) cp_async_16(tile + 4 * (lane ^ 5), src + 4 * lane, (zero_mask >> lane) & 1 ? 0 : 16);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  for (int j = 0; j < 4; j++) out[4 * lane + j] = tile[4 * lane + j];
}
