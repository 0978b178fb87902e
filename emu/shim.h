// emu/shim.h: force-included (g++ -include) when kernels/*.cu are compiled as host C++ for the CPU emulator.
// NVRTC never sees it. It maps the CUDA language onto C++ plus the runtime in emu/runtime.cpp:
// - every CUDA thread of a block is a fiber on one OS thread, so a block's `__shared__` variables are
//   `static thread_local` (one copy per OS thread, i.e. per block in flight);
// - __syncthreads() is a block barrier that knows its call site (file:line), so divergent barriers and
//   deadlocks are reported with a location instead of hanging;
// - warp shuffles exchange values through 32 per-warp slots between two warp barriers;
// - the tensor-core instructions (mma.sync, ldmatrix, cp.async) are runtime functions with the PTX ISA's
//   semantics, declared below and wrapped by kernels/common.cuh's helpers.
#pragma once
// Standard headers first: libstdc++ itself uses attributes that the macros below would break.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define CUDA_EMU 1

// ---- qualifiers ------------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__ static
#define __shared__ static thread_local
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// `__restrict__` is native to g++; `#pragma unroll` is ignored (-Wno-unknown-pragmas).

// ---- built-in types and indices ----------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct __align__(16) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
constexpr int warpSize = 32;
// Set by the runtime before a fiber runs; thread_local because blocks run on several OS threads at once.
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

// ---- runtime hooks (emu/runtime.cpp) -----------------------------------------------------------------------------
extern "C" void emu_syncthreads(const char* site);
extern "C" void emu_syncwarp(const char* site);
extern "C" uint64_t* emu_warp_slots();
extern "C" void* emu_dynamic_smem();
extern "C" [[noreturn]] void emu_fail(const char* what);
// Tensor-core instructions (kernels/common.cuh calls them through helpers with the GPU's signatures). The warp
// collectives (mma, ldmatrix) must be reached by all 32 lanes of a full warp, like a full-mask shuffle; `site`
// names the call for divergence and deadlock reports.
extern "C" void emu_mma_bf16_16816(float* d, const unsigned* a, const unsigned* b, const float* c,
                                   const char* site);
extern "C" void emu_ldmatrix(unsigned* r, const void* row, int count, int trans, const char* site);
extern "C" void emu_cp_async_16(void* smem, const void* gmem, int src_bytes);
extern "C" void emu_cp_async_commit();
extern "C" void emu_cp_async_wait(int n);

#define EMU_STR2(x) #x
#define EMU_STR(x) EMU_STR2(x)
// The site string identifies the call: two __syncthreads() on one line (in one macro) differ by __COUNTER__.
#define EMU_SITE __FILE__ ":" EMU_STR(__LINE__) "#" EMU_STR(__COUNTER__)
#define __syncthreads() emu_syncthreads(EMU_SITE)
#define __syncwarp(...) emu_syncwarp(EMU_SITE)
// Blocks may run on different host threads: a fence and real atomics, as a GPU's are device-wide.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence_block() {}

// ---- warp shuffles: publish to the warp's slots, barrier, read, barrier (slots stay valid until all have read) ----
inline unsigned emu_lane() { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u; }
template <class T> inline T emu_shfl(unsigned mask, T v, unsigned src, const char* site) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  if (mask != 0xffffffffu) emu_fail("the emulator supports only full-warp (0xffffffff) shuffle masks");
  uint64_t* s = emu_warp_slots();
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  s[emu_lane()] = bits;
  emu_syncwarp(site);
  bits = s[src & 31u];
  emu_syncwarp(site);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}
#define __shfl_sync(m, v, src, ...) emu_shfl_idx(m, v, src, EMU_SITE, ##__VA_ARGS__)
#define __shfl_down_sync(m, v, d, ...) emu_shfl_down(m, v, d, EMU_SITE, ##__VA_ARGS__)
#define __shfl_xor_sync(m, v, x, ...) emu_shfl_xor(m, v, x, EMU_SITE, ##__VA_ARGS__)
template <class T> inline T emu_shfl_idx(unsigned m, T v, int src, const char* site, int w = 32) {
  unsigned l = emu_lane();
  return emu_shfl(m, v, (l & ~(w - 1u)) + (src & (w - 1)), site);
}
template <class T> inline T emu_shfl_down(unsigned m, T v, unsigned d, const char* site, int w = 32) {
  unsigned l = emu_lane();
  return emu_shfl(m, v, (l % w) + d < unsigned(w) ? l + d : l, site);
}
template <class T> inline T emu_shfl_xor(unsigned m, T v, int x, const char* site, int w = 32) {
  unsigned l = emu_lane(), s = l ^ x;
  return emu_shfl(m, v, (s & ~(w - 1u)) > (l & ~(w - 1u)) ? l : s, site);
}

// ---- math: host libm. CUDA's sinf/cosf/expf/logf are within 2 ulp of these; fast intrinsics are mapped to the
// accurate functions here, so a kernel that needs accuracy must not use them (tests on a GPU would show it).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.f), 1.f); }
inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
