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
std::map<uintptr_t, size_t> allocations;  // start -> bytes

// The allocation holding [p, p + n), or nullptr.
const std::pair<const uintptr_t, size_t>* find_alloc(const void* p, size_t n) {
  const uintptr_t a = uintptr_t(p);
  auto it = allocations.upper_bound(a);
  if (it == allocations.begin()) return nullptr;
  --it;
  if (a >= it->first && a + n <= it->first + std::max<size_t>(it->second, 1)) return &*it;
  return nullptr;
}

std::map<const void*, int> max_dyn_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel

// ---- fibers -----------------------------------------------------------------------------------------
enum State { RUN, BAR, WARP, DONE };
constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;

struct Fiber {
  void* sp = nullptr;
  uint3 tid{};
  State st = RUN;
  int lin = 0;
  int wcount = 0;
  const char* file = nullptr;  // where it waits
  int line = 0;
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
std::vector<std::unique_ptr<Stack>> stacks;
void* sched_sp = nullptr;
int cur = -1;                // the running fiber, -1 in the scheduler
std::vector<int> order;      // the order the fibers run in this phase
size_t pos = 0;              // cur == order[pos]
int n_bar = 0, n_warp = 0, n_done = 0;
bool from_sched = false;     // the last switch left the scheduler (AddressSanitizer bookkeeping)
unsigned char* smem_ptr = nullptr;
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

enum class Schedule { Forward, Reverse, Random };
Schedule schedule = Schedule::Forward;
std::mt19937 sched_rng(1);
bool sched_init = false;

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
  else
    die("EMU_SCHEDULE=%s: expected forward, reverse or random", v);
  if (const char* seed = std::getenv("EMU_SEED")) sched_rng.seed(unsigned(std::strtoul(seed, nullptr, 10)));
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
    bottom = stacks[size_t(cur)]->base;
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
  emu_switch(&f.sp, target);
#ifdef EMU_ASAN
  note_switch_done(f.fake_stack);
#endif
}

extern "C" void emu_trampoline() {
#ifdef EMU_ASAN
  note_switch_done(nullptr);
#endif
  (*body_ptr)();
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
  __sanitizer_start_switch_fiber(&fake, stacks[size_t(cur)]->base, kStack);
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
  while (stacks.size() < size_t(nt)) stacks.emplace_back(new Stack());
  slots.assign(size_t((nt + 31) / 32) * 2 * 32 * 16, 0);
  for (int t = 0; t < nt; ++t) {
    Fiber& f = fibers[size_t(t)];
    f.lin = t;
    f.tid = {unsigned(t % int(detail::cur_bdim.x)), unsigned((t / int(detail::cur_bdim.x)) % int(detail::cur_bdim.y)),
             unsigned(t / int(detail::cur_bdim.x * detail::cur_bdim.y))};
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(stacks[size_t(t)]->base, kStack);
#endif
    const uintptr_t top = (uintptr_t(stacks[size_t(t)]->base) + kStack) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                   // alignment: rsp % 16 == 8 at the trampoline's entry
    *--sp = reinterpret_cast<void*>(&emu_trampoline);  // emu_switch returns here
    for (int r = 0; r < 6; ++r) *--sp = nullptr;       // callee-saved registers
    f.sp = sp;
  }
  order.resize(size_t(nt));
  for (int t = 0; t < nt; ++t) order[size_t(t)] = schedule == Schedule::Reverse ? nt - 1 - t : t;
  n_bar = n_warp = n_done = 0;
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

void syncthreads(const char* file, int line) {
  Fiber& f = fibers[size_t(cur)];
  f.file = file;
  f.line = line;
  yield_state(BAR);
}

void syncwarp(unsigned mask, const char* file, int line) {
  if (mask != 0xffffffffu) die("__syncwarp with a partial mask is not emulated (%s)", std::string(file));
  Fiber& f = fibers[size_t(cur)];
  f.file = file;
  f.line = line;
  f.wcount++;
  yield_state(WARP);
}

void warp_put(const void* v, size_t n, unsigned mask, const char* file, int line) {
  if (mask != 0xffffffffu) die("warp shuffle with a partial mask is not emulated (%s)", std::string(file));
  Fiber& f = fibers[size_t(cur)];
  f.file = file;
  f.line = line;
  std::memcpy(slot(f.lin / 32, f.wcount % 2, f.lin % 32), v, n);
  f.wcount++;
  yield_state(WARP);
}

void warp_get(void* v, size_t n, int lane) {
  Fiber& f = fibers[size_t(cur)];
  const int l = (f.lin / 32) * 32 + lane;
  if (l >= int(fibers.size())) die("%s: shuffle from lane %s of a partial warp", where(), std::to_string(lane));
  std::memcpy(v, slot(f.lin / 32, (f.wcount - 1) % 2, lane), n);
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

int launch(const LaunchSite& site, const void* func, dim3 g, dim3 b, size_t sm, cudaStream_t,
           const std::function<void()>& body) {
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
  detail::cur_gdim = {g.x, g.y, g.z};
  detail::cur_bdim = {b.x, b.y, b.z};
  // Exactly sm bytes (AddressSanitizer sees an overrun), 256-aligned, refilled with 0xff per block.
  smem_ptr = static_cast<unsigned char*>(::operator new[](std::max<size_t>(sm, 1), std::align_val_t(256)));
  body_ptr = &body;
  cur_site = &site;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        detail::cur_bidx = {x, y, z};
        std::memset(smem_ptr, 0xff, sm);
        run_block();
      }
  ::operator delete[](smem_ptr, std::align_val_t(256));
  smem_ptr = nullptr;
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

cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);
  if (!*p) return set_error(cudaErrorMemoryAllocation);
  std::memset(*p, 0xff, n);  // uninitialised device memory reads as NaN / -1
  emu::allocations[uintptr_t(*p)] = n;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  auto it = emu::allocations.find(uintptr_t(p));
  if (it == emu::allocations.end()) {
    std::fprintf(stderr, "cuda-emu: cudaFree(%p): not a cudaMalloc pointer\n", p);
    return set_error(cudaErrorInvalidDevicePointer);
  }
  emu::allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

namespace {
bool check_dev(const char* what, const void* p, size_t n) {
  if (n == 0 || emu::find_alloc(p, n)) return true;
  std::fprintf(stderr, "cuda-emu: %s: [%p, +%zu) is not inside one cudaMalloc allocation\n", what, p, n);
  return false;
}
bool check_host(const char* what, const void* p, size_t n) {
  if (n == 0 || !emu::find_alloc(p, 1)) return true;
  std::fprintf(stderr, "cuda-emu: %s: %p is device memory, expected host memory\n", what, p);
  return false;
}
}  // namespace

cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) {
  bool ok = true;
  switch (k) {
    case cudaMemcpyHostToDevice: ok = check_dev("cudaMemcpy H2D dst", d, n) && check_host("cudaMemcpy H2D src", s, n); break;
    case cudaMemcpyDeviceToHost: ok = check_dev("cudaMemcpy D2H src", s, n) && check_host("cudaMemcpy D2H dst", d, n); break;
    case cudaMemcpyDeviceToDevice: ok = check_dev("cudaMemcpy D2D dst", d, n) && check_dev("cudaMemcpy D2D src", s, n); break;
    case cudaMemcpyHostToHost:
    case cudaMemcpyDefault: break;
    default: return set_error(cudaErrorInvalidMemcpyDirection);
  }
  if (!ok) return set_error(cudaErrorInvalidValue);
  if (n) std::memmove(d, s, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t st) {
  if (!stream_ok(st)) return set_error(cudaErrorInvalidResourceHandle);
  return cudaMemcpy(d, s, n, k);
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  if (!check_dev("cudaMemset", p, n)) return set_error(cudaErrorInvalidValue);
  if (n) std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t st) {
  if (!stream_ok(st)) return set_error(cudaErrorInvalidResourceHandle);
  return cudaMemset(p, v, n);
}
