// The grid of a generation launch (csrc/generate.cu, csrc/official.cu): blocks over slices of
// positions, the basis indices split across blocks (the k-split) where the slices alone would not
// fill the GPU, and the partials that the k-split and the projections need.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "partials.cuh"

namespace nola {

// Both launches run blocks of 8 warps.
constexpr int kGenerateThreads = 256;
constexpr int kGenerateWarps = kGenerateThreads / kWarpSize;
// Fewer basis indices than this per k-split (4 per warp) spend more on partial sums than they save.
constexpr int kMinIndicesPerSplit = 4 * kGenerateWarps;
// The partials stay under 16 MiB: the mix partials of a k-split, and the projection partials
// (blocks x k; past this many basis indices, fewer blocks and a wider k-split fill the GPU).
constexpr int64_t kMaxMixPartialEntries = 1 << 22;
constexpr int64_t kMaxProjectPartialEntries = 1 << 22;

struct GeneratePlan {
  int64_t slices, blocks;  // block b walks slices b, b + blocks, ...
  int splits;
  int64_t k_per_split;
  size_t mix_partial_bytes, project_partial_bytes;
};

// No positions: no launch and no workspace (the launches only zero the projection).
inline GeneratePlan generate_plan(int64_t slice_entries, int64_t numel, int64_t k, bool mixes, bool projects,
                                  int sm_count) {
  GeneratePlan result{};
  if (numel == 0) return result;
  const int64_t wanted_blocks = 4LL * sm_count;  // as many as run at once at about 64 registers
  result.slices = ceil_div(numel, slice_entries);
  result.blocks = std::min(result.slices, wanted_blocks);
  if (projects) {
    result.blocks = std::min(result.blocks, std::max<int64_t>(1, kMaxProjectPartialEntries / std::max<int64_t>(1, k)));
  }
  int64_t splits = 1;
  if (result.blocks < wanted_blocks) {
    splits = std::min(ceil_div(wanted_blocks, result.blocks), ceil_div(k, kMinIndicesPerSplit));
    if (mixes) splits = std::min(splits, kMaxMixPartialEntries / numel);
  }
  // k = 0 still launches one split: the mix is then the offset alone.
  result.k_per_split = std::max<int64_t>(1, ceil_div(k, std::max<int64_t>(1, splits)));
  result.splits = static_cast<int>(std::max<int64_t>(1, ceil_div(k, result.k_per_split)));
  if (mixes && result.splits > 1) result.mix_partial_bytes = align_bytes(sizeof(float) * result.splits * numel);
  if (projects) result.project_partial_bytes = align_bytes(sizeof(float) * result.blocks * k);
  return result;
}

}  // namespace nola
