// Reductions shared by the CPU norm kernels (instance_norm_cpu.cpp, the group-norm files): the accumulation type,
// lane sums in double, chunks widened to the accumulation type and Chan's merge of running moments.
#pragma once

#include <cstdint>
#include <type_traits>

#include "convert16.h"

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
constexpr int kLanes = 16;

// lanes[0] + ... + lanes[kLanes - 1], pairwise, in the same order for every ISA.
inline __attribute__((always_inline)) double lane_tree(double* lanes) {
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) lanes[k] += lanes[k + w];
  return lanes[0];
}

template <typename F>
inline __attribute__((always_inline)) double lane_sum(int64_t n, F f) {
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += f(i + k);
  }
  for (; i < n; ++i) lanes[i % kLanes] += f(i);
  return lane_tree(lanes);
}

// out[j] += sum_i f(i)[j] for j < K: K lane sums (each bit for bit as lane_sum's) in one sweep, so loops that
// need several sums over the same elements load and widen each element once.
template <int K, typename F>
inline __attribute__((always_inline)) void lane_sums(int64_t n, F f, double* out) {
  double lanes[K][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      double v[K];
      f(i + k, v);
      for (int j = 0; j < K; ++j) lanes[j][k] += v[j];
    }
  }
  for (; i < n; ++i) {
    double v[K];
    f(i, v);
    for (int j = 0; j < K; ++j) lanes[j][i % kLanes] += v[j];
  }
  for (int j = 0; j < K; ++j) out[j] += lane_tree(lanes[j]);
}

// v itself when T is its own accumulation type, else (16-bit T) its n values widened into buf: lane sums
// vectorise over float input but stayed scalar over 16-bit loads (3x slower bfloat16 statistics than float32).
template <typename T>
inline __attribute__((always_inline)) const acc_of<T>* widened(const T* v, int64_t n, acc_of<T>* buf) {
  if constexpr (std::is_same_v<T, acc_of<T>>) {
    return v;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = load_as<acc_of<T>>(v[i]);
    return buf;
  }
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
