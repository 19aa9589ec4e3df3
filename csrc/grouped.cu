// Grouped mix and projection: G rows of coefficients (or gradients) over one basis family, every
// generated basis entry used by all the rows of a chunk (up to 16 rows uniform, 8 in the uniform16
// mix; rademacher 2 in the mix, 4 in the projection).
//
// mix: a lane owns the positions of one Philox call (uniform: 4, uniform16: 8) or one word of a call
// (rademacher: 32; the 4 lanes of a call group make one call each per 4 basis indices and share
// the words by shuffles) and its rows' sums of them in registers, and walks its k-split's basis
// indices in increasing order. The coefficients of 32 indices at a time sit in shared memory, one
// index's rows side by side. Splits write partials that a second kernel adds in split order.
//
// project: a lane owns 4 basis indices and its rows' sums against them, and walks its chunk of
// positions in increasing order, one call per index at a time; the gradients of a tile of positions
// sit in shared memory, where every lane of the block reads the same ones (a broadcast), each
// read feeding 4 sums. Chunks write partials (chunk, G, k) that a second kernel adds in order.
//
// An official CUDA layout family (csrc/official.cuh) runs in uniform's geometry (4 positions a mix
// lane, 4 indices a projection lane, 64-position tiles, the same row chunks), each entry its own
// Philox call: a lane steps the flat indices li = i * numel + n of its entries by adding (one basis
// index in the mix, one position in the projection), not dividing.
#include <algorithm>
#include <type_traits>

#include "grouped_entries.cuh"
#include "nola_cuda.h"
#include "official.cuh"
#include "partials.cuh"

namespace nola {
namespace {

constexpr int kThreads = 128;
constexpr int kStageSteps = 32;        // mix: basis indices whose coefficients are staged at once
constexpr int kMinStepsPerSplit = 16;  // each partial of a k-split sums at least this many products
constexpr int kProjectIndices = 4;     // project: basis indices per lane
constexpr int kMinChunkPositions = 32;  // likewise for a chunk of positions in the projection
constexpr int64_t kMaxPartialEntries = 1 << 22;  // 16 MiB of partials at most

// mix: positions per lane (uniform: one call's 4, uniform16: its 8; rademacher: one word's 32).
template <Distribution D>
constexpr int kLanePositions = is_rademacher(D) ? 32 : CallEntries<D>::kCount;

// Rows per chunk, at most: as many as keep a lane within about 150 registers, no spills (a mix
// lane holds kLanePositions sums per row: 64 at most uniform, 32 of a rademacher row).
template <Distribution D>
constexpr int kMaxMixRows = is_rademacher(D) ? 2 : 64 / kLanePositions<D>;
template <Distribution D>
constexpr int kMaxProjectRows = is_rademacher(D) ? 4 : 16;

// project: calls per shared-memory tile of gradients (64 positions uniform, 256 rademacher).
template <Distribution D>
constexpr int kTileCalls = (is_rademacher(D) ? 256 : 64) / CallEntries<D>::kCount;

template <int R>
using Rows = std::integral_constant<int, R>;

// The smallest power of two >= groups, at most max_rows.
int64_t rows_per_chunk(int64_t groups, int max_rows) {
  int64_t rows = 1;
  while (rows < groups && rows < max_rows) rows *= 2;
  return rows;
}

// Row first_row + r of G, or the last row past G: staged but never stored.
__device__ __forceinline__ int64_t staged_row(int64_t first_row, int r, int64_t groups) {
  return min(first_row + r, groups - 1);
}

// launch(Rows<rows>{}) for rows a power of two up to kMax.
template <int kMax, int R = 1, typename Launch>
void with_rows(int64_t rows, Launch&& launch) {
  if constexpr (R < kMax) {
    if (rows > R) return with_rows<kMax, 2 * R>(rows, launch);
  }
  launch(Rows<R>{});
}

// kRows weights (or gradients) from 16-byte aligned shared memory, 4 per load where kRows allows.
template <int kRows>
__device__ __forceinline__ void load_row(const float* source, float (&out)[kRows]) {
  if constexpr (kRows % 4 == 0) {
#pragma unroll
    for (int r = 0; r < kRows; r += 4) {
      const float4 v = *reinterpret_cast<const float4*>(source + r);
      out[r] = v.x, out[r + 1] = v.y, out[r + 2] = v.z, out[r + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int r = 0; r < kRows; ++r) out[r] = source[r];
  }
}

// An official family as its grouped kernels step it: entry n of basis matrix i is the draw at flat
// index i * numel + n of the (k, numel) basis.
struct OfficialGrid {
  RoundKeys keys;         // the seed's
  uint32_t threads;       // T
  OfficialCursor matrix;  // numel entries: one basis index on

  static OfficialGrid of(const OfficialGroupedProblem& p) {
    const uint32_t threads = p.family.threads(static_cast<uint64_t>(p.k) * p.numel);
    return OfficialGrid{p.family.round_keys(), threads, OfficialCursor::at(p.numel, threads)};
  }
  __device__ OfficialCursor at(int64_t index, int64_t n, int64_t numel) const {
    return OfficialCursor::at(static_cast<uint64_t>(index * numel + n), threads);
  }
  // The entry at cursor, unscaled, and the cursor moved on by one position.
  template <OfficialDtype kDtype, bool kLegacy>
  __device__ float next_position(OfficialCursor& cursor) const {
    const float entry = official_entry<kDtype, kLegacy>(keys, cursor);
    cursor.advance(OfficialCursor{0u, 1u}, threads);
    return entry;
  }
};

// The geometry (positions a lane, rows a chunk, tiles) an official family's grouped kernels take.
constexpr Distribution kOfficialGeometry = Distribution::kUniform;

template <typename F>
struct MixArgs {
  F family;
  int64_t groups, numel, k, k_per_split;
  int64_t position_blocks, items;  // items: row chunks x position blocks
  float scale;
  const float* coeffs;  // (groups, k)
  float* out;           // (groups, numel), or the partials (splits, groups, numel)
  bool out_is_partial;
};

// sums[r][e] = fma(weights[r], values[e], sums[r][e]): one basis index's entries into every row.
template <int kRows, int kCount>
__device__ __forceinline__ void mix_rows(const float* weights, const float (&values)[kCount],
                                         float (&sums)[kRows][kCount]) {
  float weight[kRows];
  load_row<kRows>(weights, weight);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int e = 0; e < kCount; ++e) sums[r][e] = fmaf(weight[r], values[e], sums[r][e]);
  }
}

// sums[r][e] = fma(weight(step, r), U_{first_index + step}[call * kCount + e], sums[r][e]), step
// ascending (uniform and uniform16).
template <Distribution D, int kRows>
__device__ void uniform_mix_walk(const Family& family, uint32_t call, uint32_t first_index, int count,
                                 const float (*weights)[kRows], float (&sums)[kRows][CallEntries<D>::kCount]) {
  using Entries = CallEntries<D>;
#pragma unroll 1  // one basis index per iteration: the SASS budget counts per iteration
  for (int step = 0; step < count; ++step) {
    const Words words = Entries::call(family, call, first_index + static_cast<uint32_t>(step));
    float values[Entries::kCount];
#pragma unroll
    for (int e = 0; e < Entries::kCount; ++e) values[e] = Entries::value(words, e);
    mix_rows<kRows>(weights[step], values, sums);
  }
}

// As uniform_mix_walk for an official family: the lane's positions' entries of basis index step at
// cursors, each its own call, and the cursors moved on one basis index.
template <OfficialDtype kDtype, bool kLegacy, int kRows, int kPositions>
__device__ void official_mix_walk(const OfficialGrid& grid, OfficialCursor (&cursors)[kPositions], int count,
                                  const float (*weights)[kRows], float (&sums)[kRows][kPositions]) {
#pragma unroll 1  // one basis index per iteration: the SASS budget counts per iteration
  for (int step = 0; step < count; ++step) {
    float values[kPositions];
#pragma unroll
    for (int e = 0; e < kPositions; ++e) {
      values[e] = official_entry<kDtype, kLegacy>(grid.keys, cursors[e]);
      cursors[e].advance(grid.matrix, grid.threads);
    }
    mix_rows<kRows>(weights[step], values, sums);
  }
}

// The lanes of a call group (lane = 4 q + word) take 4 basis indices at a time: lane `word` makes
// the call of index first + word; in round r it reads its word of the call that lane
// (word + r) & 3 made, so every call is made once. Steps past count have zero weights.
template <Distribution D, int kRows>
__device__ void rademacher_mix_walk(const Family& family, uint32_t call, uint32_t first_index, int count,
                                    const float (*weights)[kRows], float (&sums)[kRows][32]) {
  const int lane = threadIdx.x % kWarpSize, word = lane & 3;
  int sources[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) sources[r] = (lane & ~3) | ((word + r) & 3);
#pragma unroll 1  // four basis indices per iteration: the SASS budget counts per iteration
  for (int first = 0; first < count; first += 4) {
    const Words own = CallEntries<D>::call(family, call, first_index + static_cast<uint32_t>(first + word));
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t bits = __shfl_sync(0xffffffffu, word_at(own, (word - r) & 3), sources[r]);
      float weight[kRows];
      load_row<kRows>(weights[first + ((word + r) & 3)], weight);
#pragma unroll
      for (int e = 0; e < 32; ++e) {
        const float value = rademacher_value(bits, e);
#pragma unroll
        for (int g = 0; g < kRows; ++g) sums[g][e] = fmaf(weight[g], value, sums[g][e]);
      }
    }
  }
}

// Blocks an SM must hold, for ptxas's register allocation (0: no bound). One-row rademacher_philox7
// lanes want 4 (128 registers): left alone, ptxas spills a word on sm_80.
template <Distribution D, int kRows>
constexpr int kMixMinBlocks = D == Distribution::kRademacherPhilox7 && kRows == 1 ? 4 : 0;

// A mix lane's entries: a NOLA-Philox distribution's calls (the lane's call, each basis index's).
template <Distribution D>
struct NolaMixLane {
  using Family = nola::Family;
  static constexpr int kPositions = kLanePositions<D>;
  uint32_t call;

  __device__ static NolaMixLane start(const MixArgs<Family>&, int64_t lane_item, int64_t, int64_t) {
    return NolaMixLane{static_cast<uint32_t>(lane_item / (CallEntries<D>::kCount / kPositions))};
  }
  template <int kRows>
  __device__ void walk(const Family& family, uint32_t first_index, int count, const float (*weights)[kRows],
                       float (&sums)[kRows][kPositions]) {
    if constexpr (is_rademacher(D)) {
      rademacher_mix_walk<D, kRows>(family, call, first_index, count, weights, sums);
    } else {
      uniform_mix_walk<D, kRows>(family, call, first_index, count, weights, sums);
    }
  }
};

// An official family's mix lane: the cursors of its positions, at the basis index it walks next.
template <OfficialDtype kDtype, bool kLegacy>
struct OfficialMixLane {
  using Family = OfficialGrid;
  static constexpr int kPositions = kLanePositions<kOfficialGeometry>;
  OfficialCursor cursors[kPositions];

  __device__ static OfficialMixLane start(const MixArgs<Family>& args, int64_t, int64_t first_position,
                                          int64_t i_begin) {
    OfficialMixLane lane;
    lane.cursors[0] = args.family.at(i_begin, first_position, args.numel);
#pragma unroll
    for (int e = 1; e < kPositions; ++e) {
      lane.cursors[e] = lane.cursors[e - 1];
      lane.cursors[e].advance(OfficialCursor{0u, 1u}, args.family.threads);
    }
    return lane;
  }
  template <int kRows>
  __device__ void walk(const Family& grid, uint32_t, int count, const float (*weights)[kRows],
                       float (&sums)[kRows][kPositions]) {
    official_mix_walk<kDtype, kLegacy, kRows>(grid, cursors, count, weights, sums);
  }
};

// The grouped mix's items (row chunk, block of positions) for lanes of type Lane.
template <typename Lane, int kRows>
__device__ __forceinline__ void mix_grouped_items(const MixArgs<typename Lane::Family>& args) {
  constexpr int kPositions = Lane::kPositions;
  // Padded to whole call groups: the rademacher walk reads 4 steps' weights at a time.
  __shared__ __align__(16) float weights[kStageSteps][kRows];
  const int64_t i_begin = blockIdx.y * args.k_per_split;
  const int64_t steps = min(args.k, i_begin + args.k_per_split) - i_begin;
  for (int64_t item = blockIdx.x; item < args.items; item += gridDim.x) {
    const int64_t first_row = item / args.position_blocks * kRows;
    const int64_t lane_item = item % args.position_blocks * kThreads + threadIdx.x;
    const int64_t first_position = lane_item * kPositions;  // call * entries + word * 32 for rademacher
    Lane lane = Lane::start(args, lane_item, first_position, i_begin);
    float sums[kRows][kPositions];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int e = 0; e < kPositions; ++e) sums[r][e] = 0.0f;
    }
    for (int64_t stage = 0; stage < steps; stage += kStageSteps) {
      __syncthreads();  // every lane is done with the previous stage's weights
      for (int s = threadIdx.x; s < kStageSteps * kRows; s += kThreads) {
        const int r = s / kStageSteps, step = s % kStageSteps;  // consecutive lanes, consecutive indices
        const int64_t row = staged_row(first_row, r, args.groups);
        weights[step][r] = stage + step < steps ? args.coeffs[row * args.k + i_begin + stage + step] : 0.0f;
      }
      __syncthreads();
      const int count = static_cast<int>(min(steps - stage, static_cast<int64_t>(kStageSteps)));
      const uint32_t first_index = static_cast<uint32_t>(i_begin + stage);
      lane.template walk<kRows>(args.family, first_index, count, weights, sums);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t row = first_row + r;
      if (row >= args.groups) break;
#pragma unroll
      for (int e = 0; e < kPositions; ++e) {
        const int64_t n = first_position + e;
        if (n >= args.numel) break;
        if (args.out_is_partial) {
          args.out[(blockIdx.y * args.groups + row) * args.numel + n] = sums[r][e];
        } else {
          args.out[row * args.numel + n] = args.scale * sums[r][e];
        }
      }
    }
  }
}

template <Distribution D, int kRows>
__global__ void __launch_bounds__(kThreads, (kMixMinBlocks<D, kRows>)) mix_grouped_kernel(const MixArgs<Family> args) {
  mix_grouped_items<NolaMixLane<D>, kRows>(args);
}

template <OfficialDtype kDtype, bool kLegacy, int kRows>
__global__ void __launch_bounds__(kThreads) official_mix_grouped_kernel(const MixArgs<OfficialGrid> args) {
  mix_grouped_items<OfficialMixLane<kDtype, kLegacy>, kRows>(args);
}

template <typename F>
struct ProjectArgs {
  F family;
  int64_t groups, numel, k, calls, chunk_calls;
  int64_t index_groups, row_chunks, items;  // items: chunks x row chunks x index groups
  const float* grads;  // (groups, numel)
  float* partials;     // (chunks, groups, k)
};

// sums[j][r] = fma(grads[r][first + e], values[j][e], sums[j][r]), e ascending: 4 positions' entries
// of the lane's indices into every row, each gradient read once for the 4 indices.
template <int kRows, int kTilePositions>
__device__ __forceinline__ void project_rows(const float (*grads)[kTilePositions], int first,
                                             const float (&values)[kProjectIndices][4],
                                             float (&sums)[kProjectIndices][kRows]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float grad[4];
    load_row<4>(&grads[r][first], grad);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
#pragma unroll
      for (int j = 0; j < kProjectIndices; ++j) sums[j][r] = fmaf(grad[e], values[j][e], sums[j][r]);
    }
  }
}

// sums[j][r] = fma(grad(r, n), U_{first_index + j}[n], sums[j][r]) over the tile's positions n in
// increasing order; one call per index and call, each gradient read once for the 4 indices.
template <Distribution D, int kRows>
__device__ void project_walk(const Family& family, uint32_t first_call, int calls, uint32_t first_index,
                             const float (*grads)[kTileCalls<D> * CallEntries<D>::kCount],
                             float (&sums)[kProjectIndices][kRows]) {
  using Entries = CallEntries<D>;
#pragma unroll 1  // one call per index per iteration: the SASS budget counts per iteration
  for (int c = 0; c < calls; ++c) {
    Words words[kProjectIndices];
#pragma unroll
    for (int j = 0; j < kProjectIndices; ++j) {
      words[j] = Entries::call(family, first_call + static_cast<uint32_t>(c), first_index + static_cast<uint32_t>(j));
    }
#pragma unroll
    for (int e4 = 0; e4 < Entries::kCount; e4 += 4) {
      float values[kProjectIndices][4];
#pragma unroll
      for (int j = 0; j < kProjectIndices; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) values[j][e] = Entries::value(words[j], e4 + e);
      }
      project_rows<kRows>(grads, c * Entries::kCount + e4, values, sums);
    }
  }
}

// As project_walk for an official family: the entries of the lane's indices at cursors, each its
// own call, the cursors moved on one position an entry.
template <OfficialDtype kDtype, bool kLegacy, int kRows, int kTilePositions>
__device__ void official_project_walk(const OfficialGrid& grid, OfficialCursor (&cursors)[kProjectIndices],
                                      int calls, const float (*grads)[kTilePositions],
                                      float (&sums)[kProjectIndices][kRows]) {
  constexpr int kEntries = CallEntries<kOfficialGeometry>::kCount;
  static_assert(kEntries == 4, "project_rows takes 4 positions at a time");
#pragma unroll 1  // 4 positions of every index per iteration: the SASS budget counts per iteration
  for (int c = 0; c < calls; ++c) {
    float values[kProjectIndices][kEntries];
#pragma unroll
    for (int j = 0; j < kProjectIndices; ++j) {
#pragma unroll
      for (int e = 0; e < kEntries; ++e) values[j][e] = grid.next_position<kDtype, kLegacy>(cursors[j]);
    }
    project_rows<kRows>(grads, c * kEntries, values, sums);
  }
}

// A projection lane's entries: a NOLA-Philox distribution's calls (each index's, each tile's).
template <Distribution D>
struct NolaProjectLane {
  using Family = nola::Family;
  static constexpr Distribution kGeometry = D;

  __device__ static NolaProjectLane start(const ProjectArgs<Family>&, int64_t, int64_t) { return {}; }
  template <int kRows, int kTilePositions>
  __device__ void walk(const Family& family, int64_t tile, int calls, int64_t first_index,
                       const float (*grads)[kTilePositions], float (&sums)[kProjectIndices][kRows]) {
    project_walk<D, kRows>(family, static_cast<uint32_t>(tile), calls, static_cast<uint32_t>(first_index), grads,
                           sums);
  }
};

// An official family's projection lane: the cursors of its indices, at the position it walks next.
template <OfficialDtype kDtype, bool kLegacy>
struct OfficialProjectLane {
  using Family = OfficialGrid;
  static constexpr Distribution kGeometry = kOfficialGeometry;
  OfficialCursor cursors[kProjectIndices];

  __device__ static OfficialProjectLane start(const ProjectArgs<Family>& args, int64_t first_index,
                                              int64_t first_call) {
    OfficialProjectLane lane;
#pragma unroll
    for (int j = 0; j < kProjectIndices; ++j) {
      lane.cursors[j] = args.family.at(first_index + j, first_call * CallEntries<kGeometry>::kCount, args.numel);
    }
    return lane;
  }
  template <int kRows, int kTilePositions>
  __device__ void walk(const Family& grid, int64_t, int calls, int64_t, const float (*grads)[kTilePositions],
                       float (&sums)[kProjectIndices][kRows]) {
    official_project_walk<kDtype, kLegacy, kRows>(grid, cursors, calls, grads, sums);
  }
};

// The grouped projection's items (chunk of positions, row chunk, group of indices) for lanes of type
// Lane; a lane's tiles follow each other, so an official lane's cursors run on through them.
template <typename Lane, int kRows>
__device__ __forceinline__ void project_grouped_items(const ProjectArgs<typename Lane::Family>& args) {
  constexpr Distribution D = Lane::kGeometry;
  constexpr int kEntries = CallEntries<D>::kCount;
  constexpr int kTilePositions = kTileCalls<D> * kEntries;
  __shared__ __align__(16) float grads[kRows][kTilePositions];
  for (int64_t item = blockIdx.x; item < args.items; item += gridDim.x) {
    const int64_t index_group = item % args.index_groups;
    const int64_t first_row = item / args.index_groups % args.row_chunks * kRows;
    const int64_t chunk = item / (args.index_groups * args.row_chunks);
    const int64_t first_index = (index_group * kThreads + threadIdx.x) * kProjectIndices;
    const int64_t call_begin = chunk * args.chunk_calls;
    const int64_t call_end = min(args.calls, call_begin + args.chunk_calls);
    Lane lane = Lane::start(args, first_index, call_begin);
    float sums[kProjectIndices][kRows];
#pragma unroll
    for (int j = 0; j < kProjectIndices; ++j) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) sums[j][r] = 0.0f;
    }
    for (int64_t tile = call_begin; tile < call_end; tile += kTileCalls<D>) {
      const int calls = static_cast<int>(min(call_end - tile, static_cast<int64_t>(kTileCalls<D>)));
      __syncthreads();  // every lane is done with the previous tile
      for (int s = threadIdx.x; s < kRows * kTilePositions; s += kThreads) {
        const int r = s / kTilePositions, p = s % kTilePositions;
        const int64_t n = tile * kEntries + p;
        const int64_t row = staged_row(first_row, r, args.groups);
        // Positions past the tile or the matrix have zero gradients: their entries add nothing.
        grads[r][p] = p < calls * kEntries && n < args.numel ? args.grads[row * args.numel + n] : 0.0f;
      }
      __syncthreads();
      lane.template walk<kRows>(args.family, tile, calls, first_index, grads, sums);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t row = first_row + r;
      if (row >= args.groups) break;
#pragma unroll
      for (int j = 0; j < kProjectIndices; ++j) {
        const int64_t index = first_index + j;
        if (index < args.k) args.partials[(chunk * args.groups + row) * args.k + index] = sums[j][r];
      }
    }
  }
}

template <Distribution D, int kRows>
__global__ void __launch_bounds__(kThreads) project_grouped_kernel(const ProjectArgs<Family> args) {
  project_grouped_items<NolaProjectLane<D>, kRows>(args);
}

template <OfficialDtype kDtype, bool kLegacy, int kRows>
__global__ void __launch_bounds__(kThreads) official_project_grouped_kernel(const ProjectArgs<OfficialGrid> args) {
  project_grouped_items<OfficialProjectLane<kDtype, kLegacy>, kRows>(args);
}

// Enough blocks for a full wave at about 128 registers a lane, and a bounded grid beyond.
int64_t wanted_blocks(int sm_count) { return 4LL * sm_count; }
int64_t grid_blocks(int64_t items, int sm_count) { return std::min<int64_t>(items, 16LL * sm_count); }

struct MixPlan {
  int64_t rows, position_blocks, items, blocks, k_per_split;
  int splits;
  size_t partial_bytes;
};

// Problem: a GroupedProblem or an OfficialGroupedProblem, planned in the geometry of D.
template <Distribution D, typename Problem>
MixPlan mix_plan(const Problem& p, int sm_count) {
  MixPlan plan{};
  plan.rows = rows_per_chunk(p.groups, kMaxMixRows<D>);
  plan.position_blocks = ceil_div(p.numel, kThreads * kLanePositions<D>);
  plan.items = ceil_div(p.groups, plan.rows) * plan.position_blocks;
  plan.blocks = grid_blocks(plan.items, sm_count);
  int64_t splits = 1;
  if (plan.items < wanted_blocks(sm_count)) {
    splits = std::min({ceil_div(wanted_blocks(sm_count), plan.items), ceil_div(p.k, kMinStepsPerSplit),
                       kMaxPartialEntries / (p.groups * p.numel), int64_t{65535}});
  }
  // k = 0 still launches one split: the mix is then zeros.
  plan.k_per_split = std::max<int64_t>(1, ceil_div(p.k, std::max<int64_t>(1, splits)));
  plan.splits = static_cast<int>(std::max<int64_t>(1, ceil_div(p.k, plan.k_per_split)));
  if (plan.splits > 1) plan.partial_bytes = align_bytes(sizeof(float) * plan.splits * p.groups * p.numel);
  return plan;
}

struct ProjectPlan {
  int64_t rows, calls, chunk_calls, chunks, index_groups, row_chunks, items, blocks;
  size_t partial_bytes;
};

template <Distribution D, typename Problem>
ProjectPlan project_plan(const Problem& p, int sm_count) {
  ProjectPlan plan{};
  plan.rows = rows_per_chunk(p.groups, kMaxProjectRows<D>);
  plan.calls = ceil_div(p.numel, CallEntries<D>::kCount);
  plan.index_groups = ceil_div(p.k, kThreads * kProjectIndices);
  plan.row_chunks = ceil_div(p.groups, plan.rows);
  const int64_t min_chunk_calls = ceil_div(kMinChunkPositions, CallEntries<D>::kCount);
  const int64_t chunks = std::min({ceil_div(wanted_blocks(sm_count), plan.index_groups * plan.row_chunks),
                                   ceil_div(plan.calls, min_chunk_calls),
                                   std::max<int64_t>(1, kMaxPartialEntries / (p.groups * p.k))});
  plan.chunk_calls = ceil_div(plan.calls, chunks);
  plan.chunks = ceil_div(plan.calls, plan.chunk_calls);
  plan.items = plan.chunks * plan.row_chunks * plan.index_groups;
  plan.blocks = grid_blocks(plan.items, sm_count);
  plan.partial_bytes = align_bytes(sizeof(float) * plan.chunks * p.groups * p.k);
  return plan;
}

template <typename Problem>
bool empty_mix(const Problem& p) { return p.groups == 0 || p.numel == 0; }
template <typename Problem>
bool empty_projection(const Problem& p) { return p.groups == 0 || p.k == 0 || p.numel == 0; }

// The grouped mix in the geometry of D: launch(Rows<rows>{}, grid, args) runs the kernel, then the
// k-split's partials are summed.
template <Distribution D, typename Problem, typename F, typename Launch>
cudaError_t run_mix_grouped(const Problem& p, const F& family, const float* coeffs, float* mixed, void* workspace,
                            int sm_count, cudaStream_t stream, Launch&& launch) {
  const MixPlan plan = mix_plan<D>(p, sm_count);
  MixArgs<F> args{family, p.groups, p.numel, p.k, plan.k_per_split, plan.position_blocks, plan.items, p.scale,
                  coeffs, mixed, plan.splits > 1};
  if (args.out_is_partial) args.out = static_cast<float*>(workspace);
  const dim3 grid(static_cast<unsigned>(plan.blocks), static_cast<unsigned>(plan.splits));
  with_rows<kMaxMixRows<D>>(plan.rows, [&](auto rows) { launch(rows, grid, args); });
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess && args.out_is_partial) {
    status = sum_partials(args.out, plan.splits, p.groups * p.numel, nullptr, p.scale, mixed, sm_count, stream);
  }
  return status;
}

// The grouped projection in the geometry of D: launch(Rows<rows>{}, blocks, args) runs the kernel,
// then the chunks' partials are summed.
template <Distribution D, typename Problem, typename F, typename Launch>
cudaError_t run_project_grouped(const Problem& p, const F& family, const float* grads, float* projected,
                                void* workspace, int sm_count, cudaStream_t stream, Launch&& launch) {
  const ProjectPlan plan = project_plan<D>(p, sm_count);
  float* partials = static_cast<float*>(workspace);
  const ProjectArgs<F> args{family, p.groups, p.numel, p.k, plan.calls, plan.chunk_calls, plan.index_groups,
                            plan.row_chunks, plan.items, grads, partials};
  with_rows<kMaxProjectRows<D>>(plan.rows, [&](auto rows) { launch(rows, static_cast<unsigned>(plan.blocks), args); });
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) {
    status = sum_partials(partials, static_cast<int>(plan.chunks), p.groups * p.k, nullptr, p.scale, projected,
                          sm_count, stream);
  }
  return status;
}

template <Distribution D>
cudaError_t mix_grouped_as(const GroupedProblem& p, const float* coeffs, float* mixed, void* workspace,
                           int sm_count, cudaStream_t stream) {
  return run_mix_grouped<D>(p, p.family, coeffs, mixed, workspace, sm_count, stream,
                            [&](auto rows, dim3 grid, const MixArgs<Family>& args) {
                              mix_grouped_kernel<D, decltype(rows)::value><<<grid, kThreads, 0, stream>>>(args);
                            });
}

template <Distribution D>
cudaError_t project_grouped_as(const GroupedProblem& p, const float* grads, float* projected, void* workspace,
                               int sm_count, cudaStream_t stream) {
  return run_project_grouped<D>(p, p.family, grads, projected, workspace, sm_count, stream,
                                [&](auto rows, unsigned blocks, const ProjectArgs<Family>& args) {
                                  project_grouped_kernel<D, decltype(rows)::value><<<blocks, kThreads, 0, stream>>>(args);
                                });
}

// The projection's empty cases: no rows or indices, nothing to write; no positions, empty sums.
template <typename Problem>
bool project_trivially(const Problem& p, float* projected, cudaStream_t stream, cudaError_t& status) {
  if (p.groups == 0 || p.k == 0) {
    status = cudaSuccess;
    return true;
  }
  if (p.numel == 0) {
    status = cudaMemsetAsync(projected, 0, sizeof(float) * p.groups * p.k, stream);
    return true;
  }
  return false;
}

}  // namespace

size_t mix_grouped_workspace_bytes(const GroupedProblem& problem, int sm_count) {
  if (empty_mix(problem)) return 0;
  return with_distribution(problem.distribution,
                           [&](auto d) { return mix_plan<decltype(d)::value>(problem, sm_count).partial_bytes; });
}

cudaError_t mix_grouped(const GroupedProblem& problem, const float* coeffs, float* mixed, void* workspace,
                        int sm_count, cudaStream_t stream) {
  if (empty_mix(problem)) return cudaSuccess;
  return with_distribution(problem.distribution, [&](auto d) {
    return mix_grouped_as<decltype(d)::value>(problem, coeffs, mixed, workspace, sm_count, stream);
  });
}

size_t project_grouped_workspace_bytes(const GroupedProblem& problem, int sm_count) {
  if (empty_projection(problem)) return 0;
  return with_distribution(problem.distribution,
                           [&](auto d) { return project_plan<decltype(d)::value>(problem, sm_count).partial_bytes; });
}

cudaError_t project_grouped(const GroupedProblem& problem, const float* grads, float* projected, void* workspace,
                            int sm_count, cudaStream_t stream) {
  cudaError_t status;
  if (project_trivially(problem, projected, stream, status)) return status;
  return with_distribution(problem.distribution, [&](auto d) {
    return project_grouped_as<decltype(d)::value>(problem, grads, projected, workspace, sm_count, stream);
  });
}

size_t mix_grouped_workspace_bytes(const OfficialGroupedProblem& problem, int sm_count) {
  return empty_mix(problem) ? 0 : mix_plan<kOfficialGeometry>(problem, sm_count).partial_bytes;
}

cudaError_t mix_grouped(const OfficialGroupedProblem& problem, const float* coeffs, float* mixed, void* workspace,
                        int sm_count, cudaStream_t stream) {
  if (empty_mix(problem)) return cudaSuccess;
  return with_official_rounding(problem.family, [&](auto dtype, auto legacy) {
    return run_mix_grouped<kOfficialGeometry>(
        problem, OfficialGrid::of(problem), coeffs, mixed, workspace, sm_count, stream,
        [&](auto rows, dim3 grid, const MixArgs<OfficialGrid>& args) {
          official_mix_grouped_kernel<decltype(dtype)::value, decltype(legacy)::value, decltype(rows)::value>
              <<<grid, kThreads, 0, stream>>>(args);
        });
  });
}

size_t project_grouped_workspace_bytes(const OfficialGroupedProblem& problem, int sm_count) {
  return empty_projection(problem) ? 0 : project_plan<kOfficialGeometry>(problem, sm_count).partial_bytes;
}

cudaError_t project_grouped(const OfficialGroupedProblem& problem, const float* grads, float* projected,
                            void* workspace, int sm_count, cudaStream_t stream) {
  cudaError_t status;
  if (project_trivially(problem, projected, stream, status)) return status;
  return with_official_rounding(problem.family, [&](auto dtype, auto legacy) {
    return run_project_grouped<kOfficialGeometry>(
        problem, OfficialGrid::of(problem), grads, projected, workspace, sm_count, stream,
        [&](auto rows, unsigned blocks, const ProjectArgs<OfficialGrid>& args) {
          official_project_grouped_kernel<decltype(dtype)::value, decltype(legacy)::value, decltype(rows)::value>
              <<<blocks, kThreads, 0, stream>>>(args);
        });
  });
}

}  // namespace nola
