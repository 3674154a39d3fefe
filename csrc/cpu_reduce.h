// Reductions shared by the CPU norm kernels (instance_norm_cpu.cpp, the group-norm files): the accumulation type,
// lane sums in double and Chan's merge of running moments.
#pragma once

#include <cstdint>
#include <type_traits>

namespace fastgan {
namespace {

template <typename T>
using acc_of = std::conditional_t<std::is_same<T, double>::value, double, float>;

// sum_i f(i) for i < n, f returning double: 16 independent double lanes (the compiler vectorises them without
// reassociating: two AVX-512 accumulators, four AVX2 ones, so the adds' latency is hidden; with 8 lanes the
// AVX-512 clone waited on one accumulator chain and the statistics pass took half of a bfloat16 forward). Terms
// and sums are double, as in eager PyTorch on CPU (acc_type<float, false> is double): float terms such as
// g * ((x - mu) * r) carry ~1.5 ulp each and, summed over a plane with cancellation, ended up several ulps from the
// float64 result where eager was within one.
template <typename F>
inline __attribute__((always_inline)) double lane_sum(int64_t n, F f) {
  constexpr int kLanes = 16;
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += f(i + k);
  }
  for (; i < n; ++i) lanes[i % kLanes] += f(i);
  for (int w = kLanes / 2; w > 0; w /= 2)  // pairwise, in the same order for every ISA
    for (int k = 0; k < w; ++k) lanes[k] += lanes[k + w];
  return lanes[0];
}

// Running (count, mean, M2), merged chunk by chunk (Chan et al.); empty chunks are skipped.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
  void merge(double n, double chunk_mean, double chunk_m2) {
    if (n == 0) return;
    const double delta = chunk_mean - mean, total = count + n;
    mean += delta * n / total;
    m2 += chunk_m2 + delta * delta * count * n / total;
    count = total;
  }
};

}  // namespace
}  // namespace fastgan
