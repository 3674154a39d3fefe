// Per-channel statistics of channels-last row chunks, shared by the instance-norm and group-norm CPU kernels
// (instance_norm_loops.h, group_norm_cl_cpu.cpp), which compile cl_moments_impl per ISA (cpu_isa.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "convert16.h"
#include "cpu_reduce.h"

namespace fastgan {
namespace {

// Rows [r0, r1) of one sample's (L, C) slab x, into out1, out2 (C doubles each, starting at zero). Float and 16-bit
// input: one pass of sums S1 = sum d and S2 = sum d^2 of d = x - K_c, K_c the sample's first row, so the chunks of
// a sample merge by plain addition and M2 = S2 - S1^2 / L once per channel (its cancellation is bounded by the
// factor L: |x - mean| <= sqrt(L) std). Two passes per chunk (a mean, then centred squares) and a Chan merge (two
// divisions) per chunk and channel cost a quarter of the group-norm channels-last forward (2x512x64x64, 2 threads:
// 2.8 -> 2.1 ms). Double input keeps those: out1, out2 are the chunk's mean and centred sum of squares.
template <typename T>
inline __attribute__((always_inline)) void cl_moments_impl(const T* x, int64_t r0, int64_t r1, int64_t C,
                                                           double* out1, double* out2) {
  using A = acc_of<T>;
  if constexpr (std::is_same_v<A, float>) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const double d = static_cast<double>(load_as<A>(x[r * C + c])) - static_cast<double>(load_as<A>(x[c]));
        out1[c] += d;
        out2[c] += d * d;
      }
  } else {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < C; ++c) out1[c] += load_as<A>(x[r * C + c]);
    for (int64_t c = 0; c < C; ++c) out1[c] /= static_cast<double>(r1 - r0);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const double d = load_as<A>(x[r * C + c]) - out1[c];
        out2[c] += d * d;
      }
  }
}

// Channel c's moments of one sample from its chunks' cl_moments_impl outputs (chunk j's out1 at parts[j * 2C],
// out2 at parts[j * 2C + C]; chunks of `rows` rows, the last one shorter); x is the sample's slab.
template <typename T>
inline Moments cl_channel_moments(const T* x, const double* parts, int64_t chunks, int64_t rows, int64_t L,
                                  int64_t C, int64_t c) {
  Moments m;
  if constexpr (std::is_same_v<acc_of<T>, float>) {
    double s1 = 0, s2 = 0;
    for (int64_t j = 0; j < chunks; ++j) s1 += parts[j * 2 * C + c], s2 += parts[j * 2 * C + C + c];
    const double dm = s1 / L;
    m.merge(static_cast<double>(L), static_cast<double>(load_as<float>(x[c])) + dm, std::max(0.0, s2 - s1 * dm));
  } else {
    for (int64_t j = 0; j < chunks; ++j)
      m.merge(static_cast<double>(std::min(rows, L - j * rows)), parts[j * 2 * C + c], parts[j * 2 * C + C + c]);
  }
  return m;
}

}  // namespace
}  // namespace fastgan
