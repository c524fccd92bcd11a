// The host emulator's runtime (tools/cuda-emu/README.md): the fiber scheduler that runs a block's
// threads, the launch checks, device memory bookkeeping and the fake runtime API.
//
// Scheduling: the threads of a block are fibers on one OS thread. Each runs, alone, until it
// reaches a barrier (__syncthreads), a warp operation (__syncwarp, __shfl_*_sync) or its end; a
// barrier opens once every thread of the block waits at it (all at the same source line, or the
// run aborts: divergent barrier), a warp operation once all 32 lanes of the warp are there. The
// order in which the fibers run between two barriers is EMU_SCHEDULE=forward (thread 0 first,
// default), reverse, or random (EMU_SEED, default 1): a result that changes with it depends on a
// race between threads of a block. Blocks run one after another, in order (x fastest).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <iterator>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// --racecheck: the kernels (and tests) are built with ThreadSanitizer, this runtime without it but
// with EMU_TSAN. Every thread slot of a block is a TSan fiber, and fiber switches carry no
// synchronisation (no_sync): TSan then sees the threads of a block as concurrent, and the only
// happens-before edges are the ones a GPU guarantees, which the runtime declares: a __syncthreads
// (each thread releases into the block's barrier at arrival, or when it exits, and acquires from it
// when the barrier opens), a __syncwarp (the same, per warp; shuffles, mma.sync and wmma order no
// memory), the launch (the host's work before it, everything after it) and __threadfence.
// Neighbouring blocks run on two sets of fibers that nothing else orders, so TSan sees them as
// concurrent too. Two accesses to one address by two threads, at least one a write, not ordered by
// those, are reported as a data race, whatever the schedule, in shared and global memory alike.
// Atomics (cuda_emu.h) are __atomic operations, which TSan does not report against each other.
#if defined(EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

extern "C" void emu_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp,
// switches to load_sp and restores the registers saved there (System V x86-64; MXCSR and the x87
// control word are left alone: device code does not change them).
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch, .-emu_switch
)");

namespace emu {
namespace {

[[noreturn]] void die(const char* fmt, const std::string& a = "", const std::string& b = "") {
  std::fprintf(stderr, "cuda-emu: ");
  std::fprintf(stderr, fmt, a.c_str(), b.c_str());
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

// ---- device description ---------------------------------------------------------------------------
constexpr int kSmemOptin = 232448;    // H100: 227 KiB opt-in dynamic shared memory per block
constexpr int kSmemDefault = 49152;   // without cudaFuncSetAttribute
constexpr int kSms = 132;
constexpr int kMaxThreads = 1024;

cudaError_t last_error = cudaSuccess;
cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

// ---- device memory ----------------------------------------------------------------------------------
// Live allocations (cudaMalloc, cudaMallocManaged) and, in a quarantine, freed ones: cudaFree does not
// hand the memory back to malloc at once but refills it with 0xff bytes (poisoned for AddressSanitizer
// under --sanitize) and keeps it until EMU_FREED_MB (default 256) MiB of newer frees push it out, so a
// pointer into it (use after free) is named as such instead of passing as host memory.
struct Alloc {
  size_t bytes;
  bool managed;
  unsigned long serial;  // the n-th allocation
};
struct FreedAlloc {
  size_t bytes;
  unsigned long serial, free_serial;  // the n-th allocation, the n-th cudaFree
};
std::map<uintptr_t, Alloc> allocations;  // start -> allocation
std::map<uintptr_t, FreedAlloc> freed;   // the quarantine; disjoint from allocations
std::vector<uintptr_t> freed_order;      // oldest first
size_t freed_bytes = 0;
unsigned long n_allocs = 0, n_frees = 0;
unsigned long n_launches = 0, n_ptr_args = 0, n_null_args = 0;  // checked launches and arguments

// EMU_STATS=1: at exit, how much the pointer checks saw (that they ran at all, for one).
struct Stats {
  ~Stats() {
    if (!std::getenv("EMU_STATS")) return;
    std::fprintf(stderr,
                 "cuda-emu: stats: %lu launches checked, %lu pointer arguments (%lu null), %lu device allocations, "
                 "%lu cudaFree, %zu bytes in the freed quarantine\n",
                 n_launches, n_ptr_args, n_null_args, n_allocs, n_frees, freed_bytes);
  }
} stats;

size_t freed_cap() {
  static const size_t cap = [] {
    const char* e = std::getenv("EMU_FREED_MB");
    return (e ? size_t(std::strtoull(e, nullptr, 10)) : size_t(256)) << 20;
  }();
  return cap;
}

template <class M>
typename M::const_iterator find_range(const M& m, uintptr_t a) {  // the entry with start <= a < end (or a == start)
  auto it = m.upper_bound(a);
  if (it == m.begin()) return m.end();
  --it;
  if (a == it->first || a - it->first < it->second.bytes) return it;
  return m.end();
}

// The allocation holding [p, p + n), or nullptr.
const std::pair<const uintptr_t, Alloc>* find_alloc(const void* p, size_t n) {
  const uintptr_t a = uintptr_t(p);
  auto it = allocations.upper_bound(a);
  if (it == allocations.begin()) return nullptr;
  --it;
  if (a >= it->first && a - it->first <= it->second.bytes && n <= it->second.bytes - (a - it->first)) return &*it;
  return nullptr;
}

[[noreturn]] void fault(const std::string& msg) {
  std::fprintf(stderr, "cuda-emu: %s\n", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

enum class Where { Null, Device, Overrun, Freed, Host };
// What [p, p + n) is: null (n == 0 only), inside a live allocation, starting in one but running past
// its end, in freed (quarantined) device memory, or host memory. p one past the end of an allocation
// counts as inside it for n == 0 only.
Where classify(const void* p, size_t n) {
  if (!p && n == 0) return Where::Null;
  if (find_alloc(p, n)) return Where::Device;
  const uintptr_t a = uintptr_t(p);
  // Freed blocks (quarantined, never reused while listed) do not overlap live ones, but one can start
  // where a live one ends (allocators without redzones, e.g. ThreadSanitizer's): inside a freed block
  // is a use after free, not an overrun of its neighbour.
  if (find_range(freed, a) != freed.end()) return Where::Freed;
  auto it = allocations.upper_bound(a);
  if (it != allocations.begin() && a - std::prev(it)->first <= std::prev(it)->second.bytes) return Where::Overrun;
  return Where::Host;
}

// "0x... (offset o in the allocation #s of b bytes at 0x..., freed by cudaFree #f)" and the like.
std::string describe(const void* p) {
  const uintptr_t a = uintptr_t(p);
  auto f = find_range(freed, a);  // first, as in classify
  if (f != freed.end())
    return fmt("%p (offset %zu in device allocation #%lu of %zu bytes at %p, freed by cudaFree #%lu)", p,
               size_t(a - f->first), f->second.serial, f->second.bytes, reinterpret_cast<void*>(f->first),
               f->second.free_serial);
  auto it = allocations.upper_bound(a);
  if (it != allocations.begin() && a - std::prev(it)->first <= std::prev(it)->second.bytes) {
    --it;
    return fmt("%p (offset %zu in device allocation #%lu of %zu bytes at %p)", p, size_t(a - it->first),
               it->second.serial, it->second.bytes, reinterpret_cast<void*>(it->first));
  }
  return fmt("%p (not inside any live device allocation)", p);
}

// Aborts unless [p, p + n) is device memory; names api and what.
void need_device(const char* api, const char* what, const void* p, size_t n) {
  switch (classify(p, n)) {
    case Where::Null:
    case Where::Device: return;
    case Where::Overrun:
      fault(fmt("%s: %s [%p, +%zu bytes) runs past the end of its device allocation: %s", api, what, p, n,
                describe(p).c_str()));
    case Where::Freed:
      fault(fmt("%s: %s points into freed device memory (use after cudaFree): %s", api, what, describe(p).c_str()));
    case Where::Host:
      fault(fmt("%s: %s is a host pointer, device memory expected: %s", api, what, describe(p).c_str()));
  }
}
// Aborts when p is device memory (live, not managed, or freed).
void need_host(const char* api, const char* what, const void* p) {
  const uintptr_t a = uintptr_t(p);
  auto it = find_range(allocations, a);
  if (it != allocations.end() && !it->second.managed)
    fault(fmt("%s: %s is device memory, host memory expected: %s", api, what, describe(p).c_str()));
  if (it == allocations.end() && find_range(freed, a) != freed.end())
    fault(fmt("%s: %s points into freed device memory (use after cudaFree), host memory expected: %s", api, what,
              describe(p).c_str()));
}

std::map<const void*, int> max_dyn_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel

// ---- fibers -----------------------------------------------------------------------------------------
enum State { RUN, BAR, WARP, DONE };
constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;

struct PendingCopy {
  void* dst;
  const void* src;
  size_t n, src_n;  // bytes written; bytes read from src (the rest are zero-filled)
};

void perform(const PendingCopy& c) {
  std::memcpy(c.dst, c.src, c.src_n);
  std::memset(static_cast<unsigned char*>(c.dst) + c.src_n, 0, c.n - c.src_n);
}

struct Fiber {
  void* sp = nullptr;
  uint3 tid{};
  State st = RUN;
  int lin = 0;
  int wcount = 0;
  const char* file = nullptr;  // where it waits
  int line = 0;
  // cp.async: copies issued since the last commit, and the committed groups not yet waited for
  // (oldest first). They land in shared memory only at the cp.async.wait_group that covers them.
  std::vector<PendingCopy> cp_open;
  std::vector<std::vector<PendingCopy>> cp_groups;
#ifdef EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Stack {
  char* base = nullptr;  // guard page at the bottom, then kStack usable bytes
  Stack() {
    void* p = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap of a fiber stack failed");
    mprotect(p, kGuard, PROT_NONE);  // a fiber that overflows its stack faults here
    base = static_cast<char*>(p) + kGuard;
  }
};

std::vector<Fiber> fibers;
// Block sets (--racecheck): the blocks of a launch alternate between kSets sets of thread slots
// along every grid axis (set (x + y + z) % 2), each set with its own stacks, TSan fibers, barrier
// addresses and shared memory, and blocks of different sets are not ordered (below); without the
// race check there is one set.
#ifdef EMU_TSAN
constexpr int kSets = kBlockSets;
#else
constexpr int kSets = 1;
#endif
int cur_set = 0;  // the running block's set
std::vector<std::unique_ptr<Stack>> stacks_of[kSets];
std::vector<std::unique_ptr<Stack>>* stacks_cur = &stacks_of[0];
Stack& stack(int slot) { return *(*stacks_cur)[size_t(slot)]; }
#ifdef EMU_TSAN
std::vector<void*> tsan_fibers[kSets];  // per set and thread slot, made once (like the stacks)
void* tsan_sched = nullptr;      // the host thread's own context (runs the scheduler)
// Addresses TSan synchronises on: a block's barrier and its warps' __syncwarp (per set), the launch
// (the host releases before each block, the threads acquire at their start), a set's blocks (each
// thread releases at its end, the threads of the set's next block acquire at their start, the host
// at the launch's end; two addresses per set, for alternate blocks, as a thread starts when the
// first threads of its block may have ended), and __threadfence. Blocks of different sets are
// therefore concurrent for TSan: two blocks of a launch, one a write, touching one global address
// without an atomic, a race on a GPU, are reported when the blocks are of different sets
// (neighbours along a grid axis always are; blocks of one set are ordered, as the set's fibers run
// them in turn).
// A barrier and a warp's __syncwarp have two addresses each, for alternate generations: a thread
// that has passed barrier n runs on and releases at barrier n + 1 while others have yet to resume
// from barrier n, and those must not acquire what it did after barrier n (one address would order
// the two threads' accesses between the barriers, and hide their races). Two suffice: barrier n + 2
// cannot open before every thread has resumed from barrier n + 1, so after every acquire of
// barrier n (the same for a warp's meetings).
char tsan_barrier[kSets][2], tsan_warp[kSets][32][2], tsan_launch, tsan_set_end[kSets][2], tsan_fence;
unsigned set_blocks[kSets];  // blocks run by each set (the running one counted)
int bar_gen = 0;  // barriers opened so far in the block
void tsan_switch(int to) {  // to: a thread slot, or -1 for the scheduler
  __tsan_switch_to_fiber(to < 0 ? tsan_sched : tsan_fibers[cur_set][size_t(to)], __tsan_switch_to_fiber_no_sync);
}
#endif
void* sched_sp = nullptr;
int cur = -1;                // the running fiber, -1 in the scheduler
std::vector<int> order;      // the order the fibers run in this phase
size_t pos = 0;              // cur == order[pos]
int n_bar = 0, n_warp = 0, n_done = 0;
bool from_sched = false;     // the last switch left the scheduler (AddressSanitizer bookkeeping)
unsigned char* smem_ptr = nullptr;
size_t smem_size = 0;  // the launch's dynamic shared memory bytes
const std::function<void()>* body_ptr = nullptr;
const LaunchSite* cur_site = nullptr;
std::vector<unsigned char> slots;  // warp shuffle deposits: [warp][2 parities][32 lanes][16 bytes]
std::set<std::string> warned;
#ifdef EMU_ASAN
const void* sched_stack_bottom = nullptr;
size_t sched_stack_size = 0;
void note_switch_done(void* fake) {  // in the fiber just entered
  const void* b = nullptr;
  size_t n = 0;
  __sanitizer_finish_switch_fiber(fake, &b, &n);
  if (from_sched) {
    sched_stack_bottom = b;
    sched_stack_size = n;
  }
}
#endif

// Forward / Reverse / Random: the thread order within a phase; the warps waiting at a warp
// operation are all released together, so warps advance through warp operations in step. Warps:
// forward order, but one warp at a time is released and runs on, warp operation after warp
// operation, until it waits at a block barrier (or ends) before the next warp moves: a warp then
// runs far ahead of the others, as it may on a GPU, and a missing __syncthreads between warps
// (one warp storing over shared memory another has yet to read) shows.
enum class Schedule { Forward, Reverse, Random, Warps };
Schedule schedule = Schedule::Forward;
std::mt19937 sched_rng(1);
bool sched_init = false;
unsigned set_shift = 0;  // EMU_BLOCK_SET_SHIFT: block sets by (x >> s) + (y >> s) + (z >> s)

void init_schedule() {
  if (sched_init) return;
  sched_init = true;
  const char* s = std::getenv("EMU_SCHEDULE");
  const std::string v = s ? s : "forward";
  if (v == "forward")
    schedule = Schedule::Forward;
  else if (v == "reverse")
    schedule = Schedule::Reverse;
  else if (v == "random")
    schedule = Schedule::Random;
  else if (v == "warps")
    schedule = Schedule::Warps;
  else
    die("EMU_SCHEDULE=%s: expected forward, reverse, random or warps", v);
  if (const char* seed = std::getenv("EMU_SEED")) sched_rng.seed(unsigned(std::strtoul(seed, nullptr, 10)));
  if (const char* sh = std::getenv("EMU_BLOCK_SET_SHIFT")) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(sh, &end, 10);
    if (!*sh || *end || v > 30) die("EMU_BLOCK_SET_SHIFT=%s: expected 0 to 30", std::string(sh));
    set_shift = unsigned(v);
  }
}

unsigned char* slot(int warp, int parity, int lane) {
  return slots.data() + ((size_t(warp) * 2 + size_t(parity)) * 32 + size_t(lane)) * 16;
}

std::string where() {
  char buf[512];
  std::snprintf(buf, sizeof buf, "kernel %s (launched at %s:%d), block (%u,%u,%u)", cur_site->kernel,
                cur_site->file, cur_site->line, detail::cur_bidx.x, detail::cur_bidx.y, detail::cur_bidx.z);
  return buf;
}

std::string site_of(const Fiber& f) {
  char buf[400];
  std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) at %s:%d", f.tid.x, f.tid.y, f.tid.z, f.file ? f.file : "?",
                f.line);
  return buf;
}

void enter(size_t p) {  // makes order[p] the current fiber
  pos = p;
  cur = order[p];
  detail::cur_tid = &fibers[size_t(cur)].tid;
}

// A fiber blocks (or ends): straight on to the next runnable fiber of the phase, or back to the
// scheduler when there is none.
void yield_state(State s) {
  Fiber& f = fibers[size_t(cur)];
  f.st = s;
  if (s == BAR)
    ++n_bar;
  else if (s == WARP)
    ++n_warp;
  else
    ++n_done;
  size_t p = pos + 1;
  while (p < order.size() && fibers[size_t(order[p])].st != RUN) ++p;
  void* target;
#ifdef EMU_ASAN
  const void* bottom;
  size_t size;
#endif
  if (p < order.size()) {
    enter(p);
    target = fibers[size_t(cur)].sp;
#ifdef EMU_ASAN
    bottom = stack(cur).base;
    size = kStack;
#endif
  } else {
    cur = -1;
    detail::cur_tid = nullptr;
    target = sched_sp;
#ifdef EMU_ASAN
    bottom = sched_stack_bottom;
    size = sched_stack_size;
#endif
  }
  from_sched = false;
#ifdef EMU_ASAN
  __sanitizer_start_switch_fiber(s == DONE ? nullptr : &f.fake_stack, bottom, size);
#endif
#ifdef EMU_TSAN
  tsan_switch(cur);
#endif
  emu_switch(&f.sp, target);
#ifdef EMU_ASAN
  note_switch_done(f.fake_stack);
#endif
}

extern "C" void emu_trampoline() {
#ifdef EMU_ASAN
  note_switch_done(nullptr);
#endif
#ifdef EMU_TSAN
  __tsan_acquire(&tsan_launch);           // the host's work before the launch
  // the set's blocks before this one (its shared memory, its slots), not the threads of this one
  __tsan_acquire(&tsan_set_end[cur_set][(set_blocks[cur_set] + 1) & 1]);
#endif
  (*body_ptr)();
  {  // copies still in flight when the thread exits land anyway
    Fiber& f = fibers[size_t(cur)];
    for (const auto& grp : f.cp_groups)
      for (const PendingCopy& c : grp) perform(c);
    for (const PendingCopy& c : f.cp_open) perform(c);
  }
#ifdef EMU_TSAN
  __tsan_release(&tsan_barrier[cur_set][bar_gen & 1]);  // an exited thread: arrived at the next barrier
  __tsan_release(&tsan_set_end[cur_set][set_blocks[cur_set] & 1]);
#endif
  yield_state(DONE);
  std::abort();  // a finished fiber is never resumed
}

// Runs the phase: every runnable fiber, in `order`, until it blocks.
void run_phase() {
  size_t p = 0;
  while (p < order.size() && fibers[size_t(order[p])].st != RUN) ++p;
  if (p == order.size()) return;
  enter(p);
  from_sched = true;
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stack(cur).base, kStack);
#endif
#ifdef EMU_TSAN
  tsan_switch(cur);
#endif
  emu_switch(&sched_sp, fibers[size_t(cur)].sp);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  cur = -1;
  detail::cur_tid = nullptr;
}

bool same_site(const Fiber& a, const Fiber& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

void run_block() {
  const int nt = int(detail::cur_bdim.x * detail::cur_bdim.y * detail::cur_bdim.z);
  fibers.assign(size_t(nt), Fiber{});
  stacks_cur = &stacks_of[cur_set];
  while (stacks_cur->size() < size_t(nt)) stacks_cur->emplace_back(new Stack());
  slots.assign(size_t((nt + 31) / 32) * 2 * 32 * 16, 0);
  for (int t = 0; t < nt; ++t) {
    Fiber& f = fibers[size_t(t)];
    f.lin = t;
    f.tid = {unsigned(t % int(detail::cur_bdim.x)), unsigned((t / int(detail::cur_bdim.x)) % int(detail::cur_bdim.y)),
             unsigned(t / int(detail::cur_bdim.x * detail::cur_bdim.y))};
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(stack(t).base, kStack);
#endif
    const uintptr_t top = (uintptr_t(stack(t).base) + kStack) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                   // alignment: rsp % 16 == 8 at the trampoline's entry
    *--sp = reinterpret_cast<void*>(&emu_trampoline);  // emu_switch returns here
    for (int r = 0; r < 6; ++r) *--sp = nullptr;       // callee-saved registers
    f.sp = sp;
  }
  order.resize(size_t(nt));
  for (int t = 0; t < nt; ++t) order[size_t(t)] = schedule == Schedule::Reverse ? nt - 1 - t : t;
  n_bar = n_warp = n_done = 0;
#ifdef EMU_TSAN
  if (!tsan_sched) tsan_sched = __tsan_get_current_fiber();
  ++set_blocks[cur_set];
  auto& fs = tsan_fibers[cur_set];
  while (fs.size() < size_t(nt)) {
    fs.push_back(__tsan_create_fiber(0));
    const std::string name = "emulated CUDA thread " + std::to_string(fs.size() - 1) + " of a block of set " +
                             std::to_string(cur_set);
    __tsan_set_fiber_name(fs.back(), name.c_str());
  }
  __tsan_release(&tsan_launch);  // the host's inputs (the host acquires no block's end within a launch)
  bar_gen = 0;
#endif
  for (;;) {
    if (schedule == Schedule::Random) std::shuffle(order.begin(), order.end(), sched_rng);
    run_phase();
    if (n_done == nt) break;
    bool released = false;
    // Warps whose (non-exited) lanes all wait at a warp operation.
    for (int w = 0; n_warp > 0 && w * 32 < nt; ++w) {
      const int l0 = w * 32, l1 = std::min(nt, w * 32 + 32);
      bool all_w = true, some_w = false;
      for (int l = l0; l < l1; ++l) {
        all_w = all_w && (fibers[size_t(l)].st == WARP || fibers[size_t(l)].st == DONE);
        some_w = some_w || fibers[size_t(l)].st == WARP;
      }
      if (all_w && some_w) {
        const Fiber* first = nullptr;
        for (int l = l0; l < l1; ++l) {
          Fiber& f = fibers[size_t(l)];
          if (f.st != WARP) {
            die("%s: a lane exited while its warp waits at a warp operation (%s)", where(),
                site_of(fibers[size_t(l0)]));
          }
          if (!first) first = &f;
          if (f.wcount != first->wcount || !same_site(f, *first))
            die("%s: divergent warp operation: %s", where(), site_of(*first) + " vs " + site_of(f));
          f.st = RUN;
          --n_warp;
        }
        released = true;
        if (schedule == Schedule::Warps) break;  // this warp alone runs on
      }
    }
    if (!released && n_bar > 0 && n_warp == 0) {
      // The barrier opens: every thread still running waits at it, all at the same statement.
      const Fiber* first = nullptr;
      bool some_done = false;
      for (auto& f : fibers) {
        if (f.st == DONE) {
          some_done = true;
          continue;
        }
        if (!first) first = &f;
        if (!same_site(f, *first))
          die("%s: divergent __syncthreads: %s", where(), site_of(*first) + " but " + site_of(f));
      }
      if (some_done) {
        const std::string key = std::string(first->file) + ":" + std::to_string(first->line);
        if (warned.insert(key).second)
          std::fprintf(stderr, "cuda-emu: warning: %s: threads exited while others wait at __syncthreads (%s:%d)\n",
                       where().c_str(), first->file, first->line);
      }
      for (auto& f : fibers)
        if (f.st == BAR) f.st = RUN;
      n_bar = 0;
#ifdef EMU_TSAN
      ++bar_gen;
#endif
      released = true;
    }
    if (!released) {
      std::string who;
      int shown = 0;
      for (auto& f : fibers)
        if (f.st != DONE && shown++ < 4) who += site_of(f) + (f.st == BAR ? " (barrier); " : " (warp op); ");
      die("%s: deadlock: %s", where(), who);
    }
  }
}

}  // namespace

namespace detail {
const uint3* cur_tid = nullptr;
uint3 cur_bidx{}, cur_bdim{}, cur_gdim{};
}  // namespace detail
void* dyn_smem() {
  if (cur < 0) die("extern __shared__ used outside a kernel");
  return smem_ptr;
}
int block_set() { return cur_set; }
void threadfence() {
#ifdef EMU_TSAN
  __tsan_release(&tsan_fence);
  __tsan_acquire(&tsan_fence);
#endif
}

void syncthreads(const char* file, int line) {
  Fiber& f = fibers[size_t(cur)];
  f.file = file;
  f.line = line;
#ifdef EMU_TSAN
  char* sync = &tsan_barrier[cur_set][bar_gen & 1];
  __tsan_release(sync);
#endif
  yield_state(BAR);
#ifdef EMU_TSAN
  __tsan_acquire(sync);  // the barrier has opened: every thread's accesses before it
#endif
}

// Waits until the warp's lanes are all there. With `order` (a __syncwarp, the warp's memory barrier)
// the lanes' accesses before it come before every lane's accesses after it (--racecheck); shuffles,
// mma.sync and wmma operations meet the same way but, as on a GPU, order no memory.
static void warp_wait(bool order) {
#ifdef EMU_TSAN
  if (order) {
    const Fiber& f = fibers[size_t(cur)];
    char* sync = &tsan_warp[cur_set][f.lin / 32][f.wcount & 1];  // wcount: this meeting counted
    __tsan_release(sync);
    yield_state(WARP);
    __tsan_acquire(sync);
    return;
  }
#else
  (void)order;
#endif
  yield_state(WARP);
}

static void warp_meet(const char* file, int line, bool order) {
  Fiber& f = fibers[size_t(cur)];
  f.file = file;
  f.line = line;
  f.wcount++;
  warp_wait(order);
}

void syncwarp(unsigned mask, const char* file, int line) {
  if (mask != 0xffffffffu) die("__syncwarp with a partial mask is not emulated (%s)", std::string(file));
  warp_meet(file, line, true);
}

void warp_converge(const char* file, int line) { warp_meet(file, line, false); }

// A shuffle's value through its slot, a copy ThreadSanitizer does not see (the shuffle itself orders
// no memory; its slots are the emulator's, not the kernel's): volatile bytes, which the compiler
// keeps as this loop instead of a memcpy call that TSan intercepts.
static void slot_copy(void* dst, const void* src, size_t n) {
  volatile unsigned char* d = static_cast<unsigned char*>(dst);
  const volatile unsigned char* s = static_cast<const unsigned char*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
}

void warp_put(const void* v, size_t n, unsigned mask, const char* file, int line) {
  if (mask != 0xffffffffu) die("warp shuffle with a partial mask is not emulated (%s)", std::string(file));
  Fiber& f = fibers[size_t(cur)];
  f.file = file;
  f.line = line;
  slot_copy(slot(f.lin / 32, f.wcount % 2, f.lin % 32), v, n);
  f.wcount++;
  warp_wait(false);
}

void warp_get(void* v, size_t n, int lane) {
  Fiber& f = fibers[size_t(cur)];
  const int l = (f.lin / 32) * 32 + lane;
  if (l >= int(fibers.size())) die("%s: shuffle from lane %s of a partial warp", where(), std::to_string(lane));
  slot_copy(v, slot(f.lin / 32, (f.wcount - 1) % 2, lane), n);
}

void cp_async(void* dst, const void* src, size_t n, size_t src_n) {
  if (cur < 0) die("cp.async outside a kernel%s", "");
  if (n != 4 && n != 8 && n != 16) die("%s: cp.async of %s bytes (4, 8 or 16)", where(), std::to_string(n));
  if (src_n > n) die("%s: cp.async source size %s above its copy size", where(), std::to_string(src_n));
  if (reinterpret_cast<uintptr_t>(dst) % n || (src_n && reinterpret_cast<uintptr_t>(src) % n))
    die("%s: cp.async of %s bytes from or to a misaligned address", where(), std::to_string(n));
  const unsigned char* s0 = smem_ptr;
  if (!(static_cast<unsigned char*>(dst) >= s0 && static_cast<unsigned char*>(dst) + n <= s0 + smem_size))
    die("%s: cp.async destination outside the block's dynamic shared memory%s", where(), "");
  fibers[size_t(cur)].cp_open.push_back(PendingCopy{dst, src, n, src_n});
}

void cp_async_commit() {
  Fiber& f = fibers[size_t(cur)];
  f.cp_groups.push_back(std::move(f.cp_open));
  f.cp_open.clear();
}

void cp_async_wait(int pending) {
  Fiber& f = fibers[size_t(cur)];
  while (f.cp_groups.size() > size_t(pending < 0 ? 0 : pending)) {
    for (const PendingCopy& c : f.cp_groups.front()) perform(c);
    f.cp_groups.erase(f.cp_groups.begin());
  }
}

void check_launch_bounds(long max_threads, const char* kernel, const char* file, int line) {
  const long nt = long(detail::cur_bdim.x) * detail::cur_bdim.y * detail::cur_bdim.z;
  if (nt > max_threads) {
    char buf[300];
    std::snprintf(buf, sizeof buf, "%s (%s:%d): block of %ld threads > __launch_bounds__(%ld)", kernel, file, line, nt,
                  max_threads);
    die("launch fails on a GPU (too many resources requested): %s%s", buf, "");
  }
}

cudaError_t func_set_attribute(const void* f, cudaFuncAttribute a, int v) {
  if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (v < 0 || v > kSmemOptin) return set_error(cudaErrorInvalidValue);
    max_dyn_smem[f] = v;
    return cudaSuccess;
  }
  if (a == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
  return set_error(cudaErrorInvalidValue);
}

// A block's fresh shared memory: 0xff bytes. Under --racecheck as stores TSan does not see (volatile):
// the host thread writes, and it is ordered with no block of the launch but through the launch.
void refill(unsigned char* p, size_t n) {
#ifdef EMU_TSAN
  volatile uint64_t* w = reinterpret_cast<uint64_t*>(p);  // 256-aligned
  for (size_t i = 0; i < n / 8; ++i) w[i] = ~uint64_t(0);
  for (size_t i = n / 8 * 8; i < n; ++i) static_cast<volatile unsigned char*>(p)[i] = 0xff;
#else
  std::memset(p, 0xff, n);
#endif
}

int launch(const LaunchSite& site, const void* func, dim3 g, dim3 b, size_t sm, cudaStream_t,
           const std::function<void()>& body, const PtrArg* ptrs, int n_ptrs) {
  init_schedule();
  if (cur >= 0) die("kernel launch from device code (%s) is not emulated", site.kernel);
  auto reject = [&](cudaError_t e, const char* why) {
    std::fprintf(stderr, "cuda-emu: launch of %s at %s:%d rejected (grid %u,%u,%u block %u,%u,%u smem %zu): %s\n",
                 site.kernel, site.file, site.line, g.x, g.y, g.z, b.x, b.y, b.z, sm, why);
    return int(set_error(e));
  };
  if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0)
    return reject(cudaErrorInvalidConfiguration, "empty grid or block");
  if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) return reject(cudaErrorInvalidConfiguration, "grid too large");
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || size_t(b.x) * b.y * b.z > size_t(kMaxThreads))
    return reject(cudaErrorInvalidConfiguration, "block too large");
  auto it = max_dyn_smem.find(func);
  const size_t allowed = it == max_dyn_smem.end() ? size_t(kSmemDefault) : size_t(std::max(it->second, kSmemDefault));
  if (sm > allowed)
    return reject(cudaErrorInvalidValue, sm > size_t(kSmemOptin)
                                             ? "dynamic shared memory above the device's opt-in limit"
                                             : "dynamic shared memory above 48 KiB without cudaFuncSetAttribute("
                                               "cudaFuncAttributeMaxDynamicSharedMemorySize) for this kernel");
  // Pointer arguments: a GPU kernel can only dereference device memory; a host pointer or one into
  // freed device memory is an illegal memory access there (it "works" here, everything is host memory).
  ++n_launches;
  for (int i = 0; i < n_ptrs; ++i) {
    const Where w = classify(ptrs[i].p, 0);
    ++n_ptr_args;
    n_null_args += w == Where::Null;
    if (w == Where::Null || w == Where::Device) continue;
    fault(fmt("kernel %s (launched at %s:%d): argument #%d %s: %s; on a GPU this is an illegal memory access",
              site.kernel, site.file, site.line, ptrs[i].index + 1,
              w == Where::Freed ? "points into freed memory (use after cudaFree)" : "is a host pointer",
              describe(ptrs[i].p).c_str()));
  }
  detail::cur_gdim = {g.x, g.y, g.z};
  detail::cur_bdim = {b.x, b.y, b.z};
  // Exactly sm bytes (AddressSanitizer sees an overrun), 256-aligned, refilled with 0xff per block;
  // one per block set.
  unsigned char* smem_of[kSets];
  for (auto& m : smem_of)
    m = static_cast<unsigned char*>(::operator new[](std::max<size_t>(sm, 1), std::align_val_t(256)));
  smem_size = sm;
  body_ptr = &body;
  cur_site = &site;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        detail::cur_bidx = {x, y, z};
        // a checkerboard: neighbours along every grid axis differ (with EMU_BLOCK_SET_SHIFT = s, tiles of
        // 2^s blocks: then blocks 2^s apart differ, and a run per s covers every pair)
        cur_set = int(((x >> set_shift) + (y >> set_shift) + (z >> set_shift)) % kSets);
        smem_ptr = smem_of[cur_set];
        refill(smem_ptr, sm);
        run_block();
      }
#ifdef EMU_TSAN
  for (auto& e : tsan_set_end) {  // every block before whatever follows the launch
    __tsan_acquire(&e[0]);
    __tsan_acquire(&e[1]);
  }
#endif
  cur_set = 0;
  for (auto& m : smem_of) ::operator delete[](m, std::align_val_t(256));
  smem_ptr = nullptr;
  smem_size = 0;
  body_ptr = nullptr;
  cur_site = nullptr;
  return cudaSuccess;
}

}  // namespace emu

// ---- the runtime API --------------------------------------------------------------------------------
using emu::set_error;

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return emu::last_error; }

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return set_error(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "cuda-emu (host fibers, H100-like limits)");
  p->totalGlobalMem = size_t(80) << 30;
  p->sharedMemPerBlock = size_t(emu::kSmemDefault);
  p->sharedMemPerBlockOptin = size_t(emu::kSmemOptin);
  p->warpSize = 32;
  p->maxThreadsPerBlock = emu::kMaxThreads;
  p->multiProcessorCount = emu::kSms;
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (d != 0) return set_error(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = emu::kMaxThreads; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = emu::kSmemDefault; return cudaSuccess;
    case cudaDevAttrWarpSize: *v = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *v = emu::kSms; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = emu::kSmemOptin; return cudaSuccess;
  }
  return set_error(cudaErrorInvalidValue);
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

namespace {
std::set<cudaStream_t> streams;
bool stream_ok(cudaStream_t s) { return s == nullptr || streams.count(s) != 0; }
}  // namespace
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (flags > cudaStreamNonBlocking) return set_error(cudaErrorInvalidValue);
  *s = reinterpret_cast<cudaStream_t>(new char(1));
  streams.insert(*s);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s || !streams.erase(s)) return set_error(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  return stream_ok(s) ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle);
}

struct EmuEvent {
  bool recorded = false;
  std::chrono::steady_clock::time_point at;
};
namespace {
std::set<cudaEvent_t> events;
bool event_ok(cudaEvent_t e) { return e != nullptr && events.count(e) != 0; }
}  // namespace
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  if (!e) return set_error(cudaErrorInvalidValue);
  *e = new EmuEvent;
  events.insert(*e);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!event_ok(e)) return set_error(cudaErrorInvalidResourceHandle);
  events.erase(e);
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!event_ok(e) || !stream_ok(s)) return set_error(cudaErrorInvalidResourceHandle);
  e->recorded = true;
  e->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  return event_ok(e) ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return set_error(cudaErrorInvalidValue);
  if (!event_ok(start) || !event_ok(end) || !start->recorded || !end->recorded)
    return set_error(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  if (!status) return set_error(cudaErrorInvalidValue);
  if (!stream_ok(s)) return set_error(cudaErrorInvalidResourceHandle);
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

namespace emu {
void check_device_range(const char* api, const char* what, const void* p, size_t n) { need_device(api, what, p, n); }
void check_host_pointer(const char* api, const char* what, const void* p) { need_host(api, what, p); }
}  // namespace emu

namespace {
cudaError_t device_alloc(void** p, size_t n, bool managed) {
  *p = std::malloc(n ? n : 1);
  if (!*p) return set_error(cudaErrorMemoryAllocation);
  std::memset(*p, 0xff, n);  // uninitialised device memory reads as NaN / -1
  emu::allocations[uintptr_t(*p)] = emu::Alloc{n, managed, ++emu::n_allocs};
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaMalloc(void** p, size_t n) { return device_alloc(p, n, false); }
cudaError_t cudaMallocManaged(void** p, size_t n, unsigned flags) {
  if (flags != cudaMemAttachGlobal && flags != cudaMemAttachHost) return set_error(cudaErrorInvalidValue);
  return device_alloc(p, n, true);
}
// Only the start of a live allocation may be freed: anything else (a second cudaFree of the same
// pointer, a pointer into an allocation, a host pointer) aborts. The memory goes to the quarantine.
cudaError_t cudaFree(void* p) {
  using emu::fault;
  using emu::fmt;
  if (!p) return cudaSuccess;
  auto it = emu::allocations.find(uintptr_t(p));
  if (it == emu::allocations.end()) {
    auto f = emu::freed.find(uintptr_t(p));
    if (f != emu::freed.end())
      fault(fmt("cudaFree(%p): double free: device allocation #%lu (%zu bytes) was already freed by cudaFree #%lu", p,
                f->second.serial, f->second.bytes, f->second.free_serial));
    fault(fmt("cudaFree(%p): not the start of a live device allocation: %s", p, emu::describe(p).c_str()));
  }
  const size_t n = it->second.bytes;
  emu::freed[uintptr_t(p)] = emu::FreedAlloc{n, it->second.serial, ++emu::n_frees};
  emu::allocations.erase(it);
  std::memset(p, 0xff, n);  // poisoned: a read through a stale pointer gives NaN / -1
#ifdef EMU_ASAN
  __asan_poison_memory_region(p, std::max<size_t>(n, 1));
#endif
  emu::freed_order.push_back(uintptr_t(p));
  emu::freed_bytes += n;
  // Hand the oldest quarantined blocks back to malloc (from then on a stale pointer into them reads as
  // a host pointer, or, once the memory is reused by cudaMalloc, goes unnoticed); the newest stays.
  size_t drop = 0;
  while (drop + 1 < emu::freed_order.size() && emu::freed_bytes > emu::freed_cap()) {
    auto q = emu::freed.find(emu::freed_order[drop++]);
    emu::freed_bytes -= q->second.bytes;
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(reinterpret_cast<void*>(q->first), std::max<size_t>(q->second.bytes, 1));
#endif
    std::free(reinterpret_cast<void*>(q->first));
    emu::freed.erase(q);
  }
  emu::freed_order.erase(emu::freed_order.begin(), emu::freed_order.begin() + std::ptrdiff_t(drop));
  return cudaSuccess;
}

// cudaMemcpy checks the direction against the pointers: the device side must lie inside one live
// allocation over all n bytes, the host side must not be device memory (managed memory counts as
// both); a mismatch (a swapped direction, a host pointer where device memory belongs, a stale
// pointer into freed memory) aborts with the pointer described.
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) {
  using emu::need_device;
  using emu::need_host;
  switch (k) {
    case cudaMemcpyHostToDevice:
      need_device("cudaMemcpy(HostToDevice)", "the destination", d, n);
      if (n) need_host("cudaMemcpy(HostToDevice)", "the source", s);
      break;
    case cudaMemcpyDeviceToHost:
      need_device("cudaMemcpy(DeviceToHost)", "the source", s, n);
      if (n) need_host("cudaMemcpy(DeviceToHost)", "the destination", d);
      break;
    case cudaMemcpyDeviceToDevice:
      need_device("cudaMemcpy(DeviceToDevice)", "the destination", d, n);
      need_device("cudaMemcpy(DeviceToDevice)", "the source", s, n);
      break;
    case cudaMemcpyHostToHost:
      if (n) need_host("cudaMemcpy(HostToHost)", "the destination", d);
      if (n) need_host("cudaMemcpy(HostToHost)", "the source", s);
      break;
    case cudaMemcpyDefault:  // inferred from the pointers (UVA): only the device side's bounds are checked
      for (auto [what, p] : {std::pair<const char*, const void*>{"the destination", d}, {"the source", s}}) {
        if (!n) break;
        const emu::Where w = emu::classify(p, 1);
        if (w != emu::Where::Host) need_device("cudaMemcpy(Default)", what, p, n);
      }
      break;
    default: return set_error(cudaErrorInvalidMemcpyDirection);
  }
  if (n) std::memmove(d, s, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t st) {
  if (!stream_ok(st)) return set_error(cudaErrorInvalidResourceHandle);
  return cudaMemcpy(d, s, n, k);
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  emu::need_device("cudaMemset", "the destination", p, n);
  if (n) std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t st) {
  if (!stream_ok(st)) return set_error(cudaErrorInvalidResourceHandle);
  return cudaMemset(p, v, n);
}
