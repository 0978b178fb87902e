// emu/runtime.cpp: runs a CUDA grid on the CPU for kernels compiled with emu/shim.h.
//
// Blocks are handed out to a few OS worker threads; inside a block every CUDA thread is a fiber, and the fibers of
// a block run round-robin on their worker, each until its next barrier. Fibers start through makecontext (one
// setcontext per thread per block) and then switch with _setjmp/_longjmp, which, unlike swapcontext, do not make a
// signal-mask system call per switch. Because scheduling is deterministic and cooperative, a barrier that can
// never complete is noticed as "no fiber can run" and reported with the source lines the threads wait at, and a
// barrier reached from two different lines is reported as divergent. Errors end the launch (never the process):
// emu_launch returns them as text.
//
// The order in which the scheduler resumes a block's fibers is forward (0..n-1, the default), reversed, or a
// seeded shuffle drawn again every round. A correct kernel computes the same bits in every order; a missing
// barrier between one thread's shared-memory write and another's read is hidden by one order and exposed by another.
//
// The tensor-core instructions live here too (emu_mma_bf16_16816, emu_ldmatrix, emu_cp_async_*), see their section.
#include <atomic>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include <ucontext.h>

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

namespace {

// A barrier of `expected` threads. `site` is the call site of the first arrival of the current generation.
struct Barrier {
  unsigned expected = 0, arrived = 0, gen = 0;
  const char* site = nullptr;
};

// One cp.async copy in flight: its data was read at issue, and lands in shared memory at the wait that completes
// its group.
struct CpAsync {
  void* dst;
  unsigned group;  // index of the commit group it belongs to (== Fiber::groups while uncommitted)
  unsigned char data[16];
};

struct Fiber {
  ucontext_t start;   // used once, to enter the fiber's stack
  jmp_buf resume;     // where the fiber continues after a yield
  uint3 tid{};
  unsigned lin = 0;
  bool started = false, done = false;
  Barrier* waiting = nullptr;  // the barrier this fiber waits at, until its generation moves on
  unsigned wait_gen = 0;
  const char* wait_site = nullptr;
  std::vector<CpAsync> pending;  // this thread's cp.async copies not yet completed, oldest first
  unsigned groups = 0;           // cp.async groups this thread committed so far

  // Ready to run as thread `t` (linear index `l`) of the next block; `pending` keeps its capacity.
  void reset(uint3 t, unsigned l) {
    tid = t;
    lin = l;
    started = done = false;
    waiting = nullptr;
    wait_gen = 0;
    wait_site = nullptr;
    pending.clear();
    groups = 0;
  }
};

// 16 bytes of dynamic shared memory, so the buffer is 16-byte aligned like the GPU's (ldmatrix and cp.async need it).
struct alignas(16) Chunk16 {
  uint32_t w[4];
};

// The dynamic shared memory fill and the cp.async poison: 0x7fc0 is a quiet NaN as bf16, 0x7fc07fc0 one as f32.
constexpr uint32_t kPoison = 0x7fc07fc0u;
// Words per lane in a tensor-core exchange area: mma publishes a[4], b[2]; ldmatrix a 64-bit row address.
constexpr size_t kTcWords = 8;

// Fiber stacks: kernels keep small register-like locals, so 64 KiB is ample (the GPU gives a thread far less).
constexpr size_t kStack = 64 * 1024;

struct Block {
  unsigned n = 0, nwarps = 0;
  std::vector<Fiber> fib;
  std::unique_ptr<char[]> stacks;  // uninitialised: only the pages a fiber touches are ever mapped
  Barrier bar;
  std::vector<Barrier> wbar;
  std::vector<uint64_t> slots;  // 32 shuffle slots per warp
  std::vector<uint32_t> tc;     // tensor-core exchange areas: 2 per warp, kTcWords per lane (see emu_mma_bf16_16816)
  size_t smem_bytes = 0;
  std::unique_ptr<Chunk16[]> smem;
  unsigned order = 0;          // 0 forward, 1 reversed, 2 shuffled (emu_launch)
  uint64_t rng = 0;            // shuffled order: the block's generator state
  std::vector<unsigned> perm;  // the fiber order of the current scheduling round
  jmp_buf sched;
  unsigned cur = 0;
  void (*kernel)(void**) = nullptr;
  void** args = nullptr;
  bool failed = false;
  std::string error;
};

thread_local Block* t_blk = nullptr;
thread_local unsigned t_warp = 0;

unsigned warp_width(const Block* b, unsigned w) { return w + 1 < b->nwarps ? 32 : b->n - 32 * w; }

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield(Block* b) {
  Fiber& f = b->fib[b->cur];
  if (!_setjmp(f.resume)) _longjmp(b->sched, 1);
}

void fiber_main() {
  Block* b = t_blk;
  b->kernel(b->args);
  Fiber& f = b->fib[b->cur];
  if (!f.pending.empty())
    emu_fail("cp.async copies still pending at thread exit (cp_async_commit() then cp_async_wait<0>() completes them)");
  f.done = true;
  // An exited thread leaves the block barrier (sm_70+ semantics), so `if (i >= n) return;` before a
  // __syncthreads() is fine; a lane leaving while its warp waits in a full-mask warp op is not.
  Barrier& w = b->wbar[f.lin / 32];
  if (w.arrived) emu_fail("a lane exited while other lanes of its warp wait in a full-mask warp operation");
  for (Barrier* br : {&b->bar, &w}) {
    br->expected--;
    if (br->arrived && br->arrived == br->expected) { br->arrived = 0; br->gen++; }
  }
  _longjmp(b->sched, 1);
}

void wait_at(Block* b, Barrier& br, const char* site, const char* what) {
  if (br.arrived == 0) br.site = site;
  else if (std::strcmp(br.site, site) != 0) {
    char msg[600];
    std::snprintf(msg, sizeof msg, "divergent %s: threads of one %s wait at %s and at %s", what,
                  &br == &b->bar ? "block" : "warp", br.site, site);
    emu_fail(msg);
  }
  Fiber& f = b->fib[b->cur];
  if (++br.arrived == br.expected) { br.arrived = 0; br.gen++; }
  else { f.waiting = &br; f.wait_gen = br.gen; f.wait_site = site; }
  yield(b);  // always yield, so the others run up to their next sync point
}

// Runs fiber `i` until it yields, exits or fails. Its own small frame holds the _setjmp, so no local of the
// scheduler loop lives across the jump.
__attribute__((noinline)) void resume(Block* b, Fiber& f, unsigned i) {
  if (_setjmp(b->sched)) return;
  if (f.started) _longjmp(f.resume, 1);
  f.started = true;
  getcontext(&f.start);
  f.start.uc_stack.ss_sp = b->stacks.get() + size_t(i) * kStack;
  f.start.uc_stack.ss_size = kStack;
  f.start.uc_link = nullptr;
  makecontext(&f.start, fiber_main, 0);
  setcontext(&f.start);
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The fiber order of the next scheduling round, in b->perm.
void next_order(Block* b) {
  if (b->order != 2) return;  // forward and reversed are set once per block
  for (unsigned i = b->n - 1; i > 0; i--) std::swap(b->perm[i], b->perm[splitmix64(b->rng) % (i + 1)]);
}

// Runs one block to completion; false (with b->error set) when a thread failed or the block deadlocked.
bool run_block(Block* b, uint3 bid, dim3 bdim, dim3 gdim, uint64_t seed) {
  blockIdx = bid; blockDim = bdim; gridDim = gdim;
  b->bar = Barrier{b->n};
  for (unsigned w = 0; w < b->nwarps; w++) b->wbar[w] = Barrier{warp_width(b, w)};
  std::fill(b->slots.begin(), b->slots.end(), 0);
  // 0x7fc07fc0 in every word of dynamic shared memory, a NaN read as f32 and as either bf16 half: a read of a
  // slot nobody wrote shows up in the results.
  for (size_t i = 0; i < (b->smem_bytes + 15) / 16; i++)
    for (uint32_t& w : b->smem[i].w) w = kPoison;
  unsigned i = 0;
  for (unsigned z = 0; z < bdim.z; z++)
    for (unsigned y = 0; y < bdim.y; y++)
      for (unsigned x = 0; x < bdim.x; x++, i++) b->fib[i].reset({x, y, z}, i);
  for (i = 0; i < b->n; i++) b->perm[i] = b->order == 1 ? b->n - 1 - i : i;
  b->rng = seed ^ (0x9E3779B97F4A7C15ull * (1 + bid.x + 65536ull * (bid.y + 65536ull * bid.z)));
  unsigned live = b->n;
  while (live) {
    bool progressed = false;
    next_order(b);
    for (unsigned j = 0; j < b->n; j++) {
      i = b->perm[j];
      Fiber& f = b->fib[i];
      if (f.done || (f.waiting && f.waiting->gen == f.wait_gen)) continue;
      f.waiting = nullptr;
      b->cur = i; threadIdx = f.tid; t_warp = i / 32;
      resume(b, f, i);
      if (b->failed) return false;
      progressed = true;
      if (f.done) live--;
    }
    if (!progressed) {
      std::map<std::string, unsigned> sites;
      for (auto& f : b->fib) if (!f.done) sites[f.wait_site]++;
      std::string msg = "deadlock: every live thread waits at a barrier that cannot complete:";
      for (auto& [s, k] : sites) msg += " " + std::to_string(k) + " thread(s) at " + s + ";";
      char where[96];
      std::snprintf(where, sizeof where, " (block %u,%u,%u)", bid.x, bid.y, bid.z);
      b->error = msg + where;
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" void emu_fail(const char* what) {
  Block* b = t_blk;
  char msg[800];
  std::snprintf(msg, sizeof msg, "%s (block %u,%u,%u thread %u,%u,%u)", what, blockIdx.x, blockIdx.y, blockIdx.z,
                threadIdx.x, threadIdx.y, threadIdx.z);
  if (!b) {  // not inside a launch: nothing to unwind to
    std::fprintf(stderr, "[cuda-emu] %s\n", msg);
    std::abort();
  }
  b->failed = true;
  b->error = msg;
  _longjmp(b->sched, 1);  // abandon every fiber of the block; their stacks hold no resources
}

extern "C" void emu_syncthreads(const char* site) { wait_at(t_blk, t_blk->bar, site, "__syncthreads()"); }

extern "C" void emu_syncwarp(const char* site) {
  Block* b = t_blk;
  if (b->wbar[t_warp].expected != warp_width(b, t_warp))
    emu_fail("full-mask warp operation after some lanes of the warp exited (undefined on the GPU)");
  wait_at(b, b->wbar[t_warp], site, "warp operation");
}

extern "C" uint64_t* emu_warp_slots() { return &t_blk->slots[32 * t_warp]; }

extern "C" void* emu_dynamic_smem() {
  if (!t_blk->smem_bytes) emu_fail("dynamic shared memory used by a launch with 0 bytes of it");
  return t_blk->smem.get();
}

// ---- tensor-core instructions -----------------------------------------------------------------------------------
// mma.sync and ldmatrix are warp collectives: each lane publishes its operands (mma: a[4], b[2]; ldmatrix: its row
// address) in the warp's exchange area, waits at a warp barrier, then computes its own results from what the lanes
// it needs published. The area is double-buffered by the parity of the warp barrier's generation, so one barrier
// per instruction suffices: a lane can publish into an area again only two barriers later, and the second of those
// cannot complete before every lane has finished reading the area after the first.

namespace {

// The warp's exchange area for a collective that waits at the warp barrier's current generation; checks that the
// whole warp (32 lanes, none exited) takes part, as the PTX `.aligned` instructions require.
uint32_t* tc_area(Block* b, const char* what) {
  char msg[200];
  if (warp_width(b, t_warp) != 32) {
    std::snprintf(msg, sizeof msg, "%s needs a full warp of 32 threads, this warp has %u (the block size is not a "
                  "multiple of 32)", what, warp_width(b, t_warp));
    emu_fail(msg);
  }
  if (b->wbar[t_warp].expected != 32) {
    std::snprintf(msg, sizeof msg, "%s after some lanes of the warp exited (it needs all 32)", what);
    emu_fail(msg);
  }
  return &b->tc[(2 * t_warp + (b->wbar[t_warp].gen & 1)) * 32 * kTcWords];
}

// The f32 value of the low (hi = false) or high bf16 half of a register.
inline float bf16_half(uint32_t r, bool hi) {
  const uint32_t bits = hi ? r & 0xffff0000u : r << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

// Fails the launch unless [p, p + 16) is 16-byte aligned and inside the block's dynamic shared memory.
void check_smem16(Block* b, const void* p, const char* what) {
  const char* base = reinterpret_cast<const char*>(b->smem.get());
  const char* q = static_cast<const char*>(p);
  char msg[300];
  if (reinterpret_cast<uintptr_t>(p) % 16) {
    std::snprintf(msg, sizeof msg, "%s: shared-memory address %p is not 16-byte aligned", what, p);
    emu_fail(msg);
  }
  if (!base || q < base || q + 16 > base + b->smem_bytes) {
    std::snprintf(msg, sizeof msg, "%s: address %p is not inside the block's dynamic shared memory (%zu bytes at %p)",
                  what, p, b->smem_bytes, static_cast<const void*>(base));
    emu_fail(msg);
  }
}

}  // namespace

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, layout as kernels/common.cuh states it (g = lane >> 2,
// t = lane & 3). Row g and g + 8 of A come from lanes 4g..4g+3, columns 2t and 2t + 1 of B from lanes 8t..8t+7, C
// is the lane's own c. Each output is c, then + A[m][k]·B[k][n] for k = 0, 1, .., 15 in that order, in f32: the
// bf16 products are exact in f32, so only the 16 additions round (the GPU's order is unspecified; tests allow for
// it).
extern "C" void emu_mma_bf16_16816(float* d, const unsigned* a, const unsigned* b, const float* c, const char* site) {
  Block* bk = t_blk;
  uint32_t* area = tc_area(bk, "mma.sync (mma_bf16_16816)");
  const unsigned lane = bk->cur & 31, g = lane >> 2, t = lane & 3;
  uint32_t* mine = area + lane * kTcWords;
  std::memcpy(mine, a, 16);
  std::memcpy(mine + 4, b, 8);
  const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];  // d may alias c
  wait_at(bk, bk->wbar[t_warp], site, "warp operation");
  float arow[2][16], bcol[2][16];
  for (unsigned q = 0; q < 4; q++) {
    const uint32_t* la = area + (4 * g + q) * kTcWords;  // holds A[g|g+8][2q, 2q+1, 2q+8, 2q+9]
    for (unsigned h = 0; h < 2; h++) {
      arow[h][2 * q] = bf16_half(la[h], false);
      arow[h][2 * q + 1] = bf16_half(la[h], true);
      arow[h][2 * q + 8] = bf16_half(la[h + 2], false);
      arow[h][2 * q + 9] = bf16_half(la[h + 2], true);
    }
    for (unsigned j = 0; j < 2; j++) {
      const uint32_t* lb = area + (4 * (2 * t + j) + q) * kTcWords + 4;  // holds B[2q, 2q+1, 2q+8, 2q+9][2t + j]
      bcol[j][2 * q] = bf16_half(lb[0], false);
      bcol[j][2 * q + 1] = bf16_half(lb[0], true);
      bcol[j][2 * q + 8] = bf16_half(lb[1], false);
      bcol[j][2 * q + 9] = bf16_half(lb[1], true);
    }
  }
  float acc[4] = {c0, c1, c2, c3};
  for (unsigned k = 0; k < 16; k++) {
    acc[0] += arow[0][k] * bcol[0][k];
    acc[1] += arow[0][k] * bcol[1][k];
    acc[2] += arow[1][k] * bcol[0][k];
    acc[3] += arow[1][k] * bcol[1][k];
  }
  std::memcpy(d, acc, 16);
}

// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: lane l supplies the address of row l & 7 of matrix l >> 3
// (lanes 8·count and up are ignored); lane l receives r[i] = (M_i[l>>2][2(l&3)], M_i[l>>2][2(l&3)+1]), or with
// trans (M_i[2(l&3)][l>>2], M_i[2(l&3)+1][l>>2]), the first value in the low half. The rows are read after the
// warp barrier, when every lane has published its address.
extern "C" void emu_ldmatrix(unsigned* r, const void* row, int count, int trans, const char* site) {
  Block* b = t_blk;
  uint32_t* area = tc_area(b, "ldmatrix");
  const unsigned lane = b->cur & 31;
  if (lane < 8u * count) check_smem16(b, row, "ldmatrix");
  std::memcpy(area + lane * kTcWords, &row, sizeof row);
  wait_at(b, b->wbar[t_warp], site, "warp operation");
  auto row_of = [&](unsigned matrix, unsigned i) {
    const unsigned char* p;
    std::memcpy(&p, area + (8 * matrix + i) * kTcWords, sizeof p);
    return p;
  };
  const unsigned g = lane >> 2, t = lane & 3;
  for (int m = 0; m < count; m++) {
    if (!trans) {
      std::memcpy(&r[m], row_of(m, g) + 4 * t, 4);
    } else {
      uint16_t lo, hi;
      std::memcpy(&lo, row_of(m, 2 * t) + 2 * g, 2);
      std::memcpy(&hi, row_of(m, 2 * t + 1) + 2 * g, 2);
      r[m] = lo | unsigned(hi) << 16;
    }
  }
}

// cp.async.cg.shared.global, 16 bytes of which the first src_bytes (0 or 16) are read, the rest zero. The source is
// read at issue and the destination poisoned (kPoison) until a wait completes the copy, so a read that comes too
// early sees NaN instead of what the GPU would happen to have there.
extern "C" void emu_cp_async_16(void* smem, const void* gmem, int src_bytes) {
  Block* b = t_blk;
  char msg[200];
  if (src_bytes != 0 && src_bytes != 16) {
    std::snprintf(msg, sizeof msg, "cp_async_16: src_bytes is %d, must be 0 or 16", src_bytes);
    emu_fail(msg);
  }
  if (reinterpret_cast<uintptr_t>(gmem) % 16) {
    std::snprintf(msg, sizeof msg, "cp_async_16: global address %p is not 16-byte aligned", gmem);
    emu_fail(msg);
  }
  check_smem16(b, smem, "cp_async_16");
  Fiber& f = b->fib[b->cur];
  CpAsync& c = f.pending.emplace_back();
  c.dst = smem;
  c.group = f.groups;
  if (src_bytes) std::memcpy(c.data, gmem, 16);
  else std::memset(c.data, 0, 16);
  const uint32_t poison[4] = {kPoison, kPoison, kPoison, kPoison};
  std::memcpy(smem, poison, 16);
}

// cp.async.commit_group: closes the group of the copies issued since the last commit (possibly none).
extern "C" void emu_cp_async_commit() {
  Block* b = t_blk;
  b->fib[b->cur].groups++;
}

// cp.async.wait_group n: completes every committed group but the newest n. As in PTX, it concerns committed groups
// only: copies issued after the last commit stay pending even with n = 0.
extern "C" void emu_cp_async_wait(int n) {
  Block* b = t_blk;
  Fiber& f = b->fib[b->cur];
  if (f.groups <= unsigned(n)) return;
  const unsigned upto = f.groups - unsigned(n);  // groups [0, upto) complete
  size_t done = 0;
  while (done < f.pending.size() && f.pending[done].group < upto) {
    std::memcpy(f.pending[done].dst, f.pending[done].data, 16);
    done++;
  }
  f.pending.erase(f.pending.begin(), f.pending.begin() + done);
}

// Checks the launch as the GPU would, then runs every block. Returns 0, or 1 with a message in `err`.
// `max_dyn_smem` is the kernel's limit: 48 KiB, or more when it opted in (the GPU's function attribute).
// `order`: 0 forward, 1 reversed, 2 shuffled with `seed` (see the top of this file).
extern "C" int emu_launch(void (*kernel)(void**), void** args, const unsigned* grid, const unsigned* block,
                          size_t dyn_smem, size_t max_dyn_smem, unsigned workers, unsigned order, uint64_t seed,
                          char* err, size_t err_len) {
  const dim3 g(grid[0], grid[1], grid[2]), bd(block[0], block[1], block[2]);
  const unsigned long long threads = 1ull * bd.x * bd.y * bd.z;
  std::string bad;
  if (threads == 0 || threads > 1024 || bd.x > 1024 || bd.y > 1024 || bd.z > 64)
    bad = "invalid block shape (at most 1024 threads; x, y <= 1024, z <= 64)";
  else if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    bad = "invalid grid shape (x < 2^31, y, z <= 65535, none 0)";
  else if (order > 2)
    bad = "unknown thread order";
  else if (dyn_smem > max_dyn_smem)
    bad = "more dynamic shared memory than the kernel's limit of " + std::to_string(max_dyn_smem) + " bytes";
  if (!bad.empty()) {
    std::snprintf(err, err_len, "launch refused: %s: grid (%u,%u,%u) block (%u,%u,%u) smem %zu", bad.c_str(), g.x,
                  g.y, g.z, bd.x, bd.y, bd.z, dyn_smem);
    return 1;
  }
  const unsigned long long nblocks = 1ull * g.x * g.y * g.z;
  workers = unsigned(std::max(1ull, std::min<unsigned long long>(workers, nblocks)));
  std::atomic<unsigned long long> next{0};
  std::atomic<bool> failed{false};
  std::string first_error;
  std::atomic_flag error_taken = ATOMIC_FLAG_INIT;
  auto work = [&] {
    Block b;
    b.n = unsigned(threads); b.nwarps = (b.n + 31) / 32;
    b.fib.resize(b.n); b.wbar.resize(b.nwarps); b.slots.resize(32 * b.nwarps);
    b.tc.resize(2 * 32 * kTcWords * b.nwarps); b.perm.resize(b.n); b.order = order;
    b.stacks.reset(new char[size_t(b.n) * kStack]);
    b.smem_bytes = dyn_smem;
    if (dyn_smem) b.smem.reset(new Chunk16[(dyn_smem + 15) / 16]);
    b.kernel = kernel; b.args = args;
    t_blk = &b;
    for (unsigned long long i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < nblocks;) {
      const uint3 bid{unsigned(i % g.x), unsigned(i / g.x % g.y), unsigned(i / g.x / g.y)};
      if (!run_block(&b, bid, bd, g, seed)) {
        failed = true;
        if (!error_taken.test_and_set()) first_error = b.error;
        break;
      }
    }
    t_blk = nullptr;
  };
  std::vector<std::thread> pool;
  for (unsigned w = 1; w < workers; w++) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (failed) {
    std::snprintf(err, err_len, "%s", first_error.c_str());
    return 1;
  }
  return 0;
}
