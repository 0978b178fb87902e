// embed.cu: the embedding lookup added to x (src/ops/embed/mod.rs) and its gradient's scatter-add. Both are
// elementwise over their output, so the backward needs no atomics: each thread sums one table element's terms in
// ascending i, the CPU's order. A label outside the table reads nothing and yields NaN (the host checks labels
// whenever it knows their bound). Launch: grid CEIL_DIV(len, 256) (capped; grid-stride), block 256.
#include "common.cuh"

// y[i][j] = x[i][j] + table[labels[i]][j] for n rows of width dim.
extern "C" __global__ void embed_add(const float* __restrict__ x, const float* __restrict__ table,
                                     const int* __restrict__ labels, float* __restrict__ y, long long n, int rows,
                                     int dim) {
  GRID_STRIDE(e, n * dim) {
    const long long i = e / dim;
    const int j = (int)(e - i * dim), l = labels[i];
    y[e] = (l >= 0 && l < rows) ? x[e] + table[(long long)l * dim + j] : nanf("");
  }
}

// dtable[r][j] = sum over i with labels[i] == r of gy[i][j], i ascending (0 when no label picks r).
extern "C" __global__ void embed_bwd(const float* __restrict__ gy, const int* __restrict__ labels,
                                     float* __restrict__ dtable, long long n, int rows, int dim) {
  GRID_STRIDE(e, (long long)rows * dim) {
    const int r = (int)(e / dim), j = (int)(e - (long long)r * dim);
    float acc = 0.0f;
    for (long long i = 0; i < n; ++i)
      if (labels[i] == r) acc += gy[i * dim + j];
    dtable[e] = acc;
  }
}
