// A host emulation of the small part of the CUDA programming model the fastgan kernels use, so their device code
// (csrc/*.cuh) runs on a CPU in the tests. The threads of a block are fibers (ucontext) on the calling thread, run
// round-robin: a thread runs until it waits at a barrier, so a launch costs context switches, not OS threads.
// __syncthreads is a barrier of the block; __shfl_xor_sync exchanges through one slot per thread between two
// barriers of the warp; dynamic shared memory is one buffer (blocks run one after another): the bytes the launch
// asked for are filled with all-ones (NaN) per block, so a read of shared memory nobody wrote shows, and the rest
// with a canary checked after each block, so a write past the launch's size is reported.
//
// What it checks: indexing, the reductions' structure, the launch geometry's coverage, barrier placement (a
// barrier some threads of a block never reach deadlocks and is reported), and the numerics of the device code in
// IEEE float/double without nvcc's FMA contraction. What it cannot: timing, memory-model races (one thread runs
// at a time), warp divergence rules, or the host wrappers in csrc/*.cu.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
// One fiber runs at a time: the scheduler sets threadIdx before it resumes one. Indices start at 0, sizes at 1.
inline dim3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0}, blockDim, gridDim;

namespace emu {

constexpr size_t kSmemBytes = 256 * 1024;  // above any device's opt-in limit
constexpr unsigned char kCanary = 0xA5;
constexpr size_t kStackBytes = 256 * 1024;

struct Barrier {
  int expected = 0, arrived = 0;
  uint64_t generation = 0;
};

struct Scheduler {
  ucontext_t main{};
  std::vector<ucontext_t> ctx;
  std::vector<std::vector<char>> stacks;
  std::vector<char> done;
  int current = -1;
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<uint64_t> lanes;  // the value each thread offers to a shuffle
  uint64_t arrivals = 0;        // at any barrier: a round of the scheduler without one made no progress
  std::mutex launch_mutex;      // one emulated launch at a time per process
};
inline Scheduler sched;

inline void yield() { swapcontext(&sched.ctx[sched.current], &sched.main); }

inline void wait(Barrier& b) {
  const uint64_t gen = b.generation;
  ++sched.arrivals;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) yield();
}

}  // namespace emu

inline void __syncthreads() { emu::wait(emu::sched.block); }

template <typename T>
T __shfl_xor_sync(unsigned /*mask: all lanes, as every caller here passes*/, T v, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 8 bytes");
  const unsigned t = threadIdx.x;
  emu::Barrier& bar = emu::sched.warps[t / 32];
  std::memcpy(&emu::sched.lanes[t], &v, sizeof(T));
  emu::wait(bar);
  T r;
  std::memcpy(&r, &emu::sched.lanes[(t & ~31u) | ((t & 31u) ^ static_cast<unsigned>(lane_mask))], sizeof(T));
  emu::wait(bar);  // nobody overwrites its slot before every lane has read
  return r;
}

namespace emu {

template <class Body>
void fiber_entry(unsigned lo, unsigned hi) {
  auto* body = reinterpret_cast<Body*>((static_cast<uintptr_t>(hi) << 32) | lo);
  (*body)();
  sched.done[sched.current] = 1;
  // returning resumes uc_link: the scheduler
}

// kernel<<<grid, threads, smem_bytes>>>(args...): blocks in order, each as `threads` fibers. `smem` is the buffer
// the kernel's extern __shared__ array names.
template <typename... KP, typename... Args>
void launch(void (*kernel)(KP...), int64_t grid, int threads, int64_t smem_bytes, unsigned char* smem,
            const Args&... args) {
  if (grid <= 0 || grid > 0x7fffffff || threads <= 0 || threads > 1024 || threads % 32 != 0)
    throw std::runtime_error("emu::launch: bad geometry");
  if (smem_bytes < 0 || static_cast<size_t>(smem_bytes) > kSmemBytes)
    throw std::runtime_error("emu::launch: more dynamic shared memory than the emulation holds");
  std::lock_guard<std::mutex> lock(sched.launch_mutex);
  gridDim.x = static_cast<unsigned>(grid);
  blockDim.x = static_cast<unsigned>(threads);
  sched.ctx.resize(threads);
  sched.done.assign(threads, 0);
  if (sched.stacks.size() < static_cast<size_t>(threads)) sched.stacks.resize(threads);
  for (auto& s : sched.stacks)
    if (s.empty()) s.resize(kStackBytes);
  sched.lanes.assign(threads, 0);
  auto body = [&] { kernel(args...); };
  const auto ptr = reinterpret_cast<uintptr_t>(&body);
  for (int64_t b = 0; b < grid; ++b) {
    blockIdx.x = static_cast<unsigned>(b);
    sched.block = Barrier{threads, 0, 0};
    sched.warps.assign(threads / 32, Barrier{32, 0, 0});
    std::memset(smem, 0xff, static_cast<size_t>(smem_bytes));
    std::memset(smem + smem_bytes, kCanary, kSmemBytes - static_cast<size_t>(smem_bytes));
    for (int t = 0; t < threads; ++t) {
      ucontext_t& c = sched.ctx[t];
      getcontext(&c);
      c.uc_stack.ss_sp = sched.stacks[t].data();
      c.uc_stack.ss_size = kStackBytes;
      c.uc_link = &sched.main;
      makecontext(&c, reinterpret_cast<void (*)()>(&fiber_entry<decltype(body)>), 2,
                  static_cast<unsigned>(ptr & 0xffffffffu), static_cast<unsigned>(ptr >> 32));
      sched.done[t] = 0;
    }
    for (int live = threads; live > 0;) {
      live = 0;
      const uint64_t arrivals = sched.arrivals;
      int finished = 0;
      for (int t = 0; t < threads; ++t) {
        if (sched.done[t]) continue;
        sched.current = t;
        threadIdx.x = static_cast<unsigned>(t);
        swapcontext(&sched.main, &sched.ctx[t]);
        sched.done[t] ? ++finished : ++live;
      }
      // Every live thread only re-checked a barrier that did not complete: none ever will.
      if (live > 0 && finished == 0 && arrivals == sched.arrivals)
        throw std::runtime_error("emu::launch: deadlock (threads wait at a barrier others never reach)");
    }
    sched.current = -1;
    for (size_t i = static_cast<size_t>(smem_bytes); i < kSmemBytes; ++i) {
      if (smem[i] != kCanary)
        throw std::runtime_error("emu::launch: a kernel wrote shared memory past the " +
                                 std::to_string(smem_bytes) + " bytes it was launched with (at byte " +
                                 std::to_string(i) + ")");
    }
  }
}

}  // namespace emu
