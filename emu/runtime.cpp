// emu/runtime.cpp: runs a CUDA grid on the CPU for kernels compiled with emu/shim.h.
//
// Blocks are handed out to a few OS worker threads; inside a block every CUDA thread is a fiber, and the fibers of
// a block run round-robin on their worker, each until its next barrier. Fibers start through makecontext (one
// setcontext per thread per block) and then switch with _setjmp/_longjmp, which, unlike swapcontext, do not make a
// signal-mask system call per switch. Because scheduling is deterministic and cooperative, a barrier that can
// never complete is noticed as "no fiber can run" and reported with the source lines the threads wait at, and a
// barrier reached from two different lines is reported as divergent. Errors end the launch (never the process):
// emu_launch returns them as text.
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

struct Fiber {
  ucontext_t start;   // used once, to enter the fiber's stack
  jmp_buf resume;     // where the fiber continues after a yield
  uint3 tid{};
  unsigned lin = 0;
  bool started = false, done = false;
  Barrier* waiting = nullptr;  // the barrier this fiber waits at, until its generation moves on
  unsigned wait_gen = 0;
  const char* wait_site = nullptr;
};

// Fiber stacks: kernels keep small register-like locals, so 64 KiB is ample (the GPU gives a thread far less).
constexpr size_t kStack = 64 * 1024;

struct Block {
  unsigned n = 0, nwarps = 0;
  std::vector<Fiber> fib;
  std::unique_ptr<char[]> stacks;  // uninitialised: only the pages a fiber touches are ever mapped
  Barrier bar;
  std::vector<Barrier> wbar;
  std::vector<uint64_t> slots;  // 32 shuffle slots per warp
  size_t smem_bytes = 0;
  std::unique_ptr<float[]> smem;
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

// Runs one block to completion; false (with b->error set) when a thread failed or the block deadlocked.
bool run_block(Block* b, uint3 bid, dim3 bdim, dim3 gdim) {
  blockIdx = bid; blockDim = bdim; gridDim = gdim;
  b->bar = Barrier{b->n};
  for (unsigned w = 0; w < b->nwarps; w++) b->wbar[w] = Barrier{warp_width(b, w)};
  std::fill(b->slots.begin(), b->slots.end(), 0);
  // NaN in every float of dynamic shared memory: a read of a slot nobody wrote shows up in the results.
  for (size_t i = 0; i < b->smem_bytes / 4; i++) b->smem[i] = __builtin_nanf("");
  unsigned i = 0;
  for (unsigned z = 0; z < bdim.z; z++)
    for (unsigned y = 0; y < bdim.y; y++)
      for (unsigned x = 0; x < bdim.x; x++, i++) b->fib[i] = Fiber{{}, {}, {x, y, z}, i};
  unsigned live = b->n;
  while (live) {
    bool progressed = false;
    for (i = 0; i < b->n; i++) {
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

// Checks the launch as the GPU would, then runs every block. Returns 0, or 1 with a message in `err`.
// `max_dyn_smem` is the kernel's limit: 48 KiB, or more when it opted in (the GPU's function attribute).
extern "C" int emu_launch(void (*kernel)(void**), void** args, const unsigned* grid, const unsigned* block,
                          size_t dyn_smem, size_t max_dyn_smem, unsigned workers, char* err, size_t err_len) {
  const dim3 g(grid[0], grid[1], grid[2]), bd(block[0], block[1], block[2]);
  const unsigned long long threads = 1ull * bd.x * bd.y * bd.z;
  std::string bad;
  if (threads == 0 || threads > 1024 || bd.x > 1024 || bd.y > 1024 || bd.z > 64)
    bad = "invalid block shape (at most 1024 threads; x, y <= 1024, z <= 64)";
  else if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    bad = "invalid grid shape (x < 2^31, y, z <= 65535, none 0)";
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
    b.stacks.reset(new char[size_t(b.n) * kStack]);
    b.smem_bytes = dyn_smem;
    if (dyn_smem) b.smem.reset(new float[(dyn_smem + 3) / 4]);
    b.kernel = kernel; b.args = args;
    t_blk = &b;
    for (unsigned long long i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < nblocks;) {
      const uint3 bid{unsigned(i % g.x), unsigned(i / g.x % g.y), unsigned(i / g.x / g.y)};
      if (!run_block(&b, bid, bd, g)) {
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
