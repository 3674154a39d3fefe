// Work split of the channels-last CPU kernels (instance norm, group norm): an (N, L, C) input walked per sample in
// row chunks, so the inner loops run along C (contiguous) and partial statistics are merged per sample.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "norm_common.h"

namespace fastgan {
namespace {

// Channels-last: elements per (sample, row range) task. Its partial statistics are merged per channel in double
// (a division each), so small row ranges made the merge dominate: with 8-row chunks (4096 / C for C = 512) a
// 2x512x16x16 forward spent more time merging than reading. 32K elements (128 KiB fp32) stay in L2.
constexpr int64_t kClChunk = 1 << 15;

inline int64_t cl_rows(int64_t C) { return std::max<int64_t>(1, kClChunk / C); }

// ------------------------------------------------------------------------- channels-last (per-sample chunks)
// Samples are taken in groups whose slab fits comfortably in the last-level cache. For each group: partial(n, r0,
// r1, out) for every (sample, row chunk) in parallel (out: nvals*C doubles), then finish(n, parts, chunks) per
// sample, then emit(n, r0, r1) for every (sample, row chunk) in parallel. One parallel region per phase per group
// (not per sample) keeps thread wake-ups rare, which matters on small, busy machines.
template <typename Partial, typename Finish, typename Emit>
void for_each_sample_cl(const PlaneShape& s, int64_t elem_bytes, int64_t nvals, Partial partial, Finish finish,
                        Emit emit) {
  constexpr int64_t kGroupBytes = 8 << 20;
  const int64_t rows = cl_rows(s.C);
  const int64_t chunks = (s.L + rows - 1) / rows;
  const int64_t group = std::max<int64_t>(1, std::min(s.N, kGroupBytes / std::max<int64_t>(1, s.L * s.C * elem_bytes)));
  const int64_t stride = chunks * nvals * s.C;  // parts per sample
  std::vector<double> parts(static_cast<size_t>(group * stride));
  for (int64_t n0 = 0; n0 < s.N; n0 += group) {
    const int64_t count = std::min(group, s.N - n0);
    at::parallel_for(0, count * chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t i = t / chunks, j = t % chunks;
        partial(n0 + i, j * rows, std::min(s.L, (j + 1) * rows), parts.data() + i * stride + j * nvals * s.C);
      }
    });
    for (int64_t i = 0; i < count; ++i) finish(n0 + i, parts.data() + i * stride, chunks);
    at::parallel_for(0, count * chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t i = t / chunks, j = t % chunks;
        emit(n0 + i, j * rows, std::min(s.L, (j + 1) * rows));
      }
    });
  }
}

}  // namespace
}  // namespace fastgan
