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
#include <algorithm>
#include <type_traits>

#include "grouped_entries.cuh"
#include "nola_cuda.h"
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

struct MixArgs {
  Family family;
  int64_t groups, numel, k, k_per_split;
  int64_t position_blocks, items;  // items: row chunks x position blocks
  float scale;
  const float* coeffs;  // (groups, k)
  float* out;           // (groups, numel), or the partials (splits, groups, numel)
  bool out_is_partial;
};

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
    float weight[kRows];
    load_row<kRows>(weights[step], weight);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int e = 0; e < Entries::kCount; ++e) sums[r][e] = fmaf(weight[r], values[e], sums[r][e]);
    }
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

template <Distribution D, int kRows>
__global__ void __launch_bounds__(kThreads, (kMixMinBlocks<D, kRows>)) mix_grouped_kernel(const MixArgs args) {
  constexpr int kPositions = kLanePositions<D>;
  // Padded to whole call groups: the rademacher walk reads 4 steps' weights at a time.
  __shared__ __align__(16) float weights[kStageSteps][kRows];
  const int64_t i_begin = blockIdx.y * args.k_per_split;
  const int64_t steps = min(args.k, i_begin + args.k_per_split) - i_begin;
  const int64_t lanes_per_call = CallEntries<D>::kCount / kPositions;
  for (int64_t item = blockIdx.x; item < args.items; item += gridDim.x) {
    const int64_t first_row = item / args.position_blocks * kRows;
    const int64_t lane_item = item % args.position_blocks * kThreads + threadIdx.x;
    const int64_t call = lane_item / lanes_per_call;
    const int64_t first_position = lane_item * kPositions;  // call * entries + word * 32 for rademacher
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
      if constexpr (is_rademacher(D)) {
        rademacher_mix_walk<D, kRows>(args.family, static_cast<uint32_t>(call), first_index, count, weights, sums);
      } else {
        uniform_mix_walk<D, kRows>(args.family, static_cast<uint32_t>(call), first_index, count, weights, sums);
      }
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

struct ProjectArgs {
  Family family;
  int64_t groups, numel, k, calls, chunk_calls;
  int64_t index_groups, row_chunks, items;  // items: chunks x row chunks x index groups
  const float* grads;  // (groups, numel)
  float* partials;     // (chunks, groups, k)
};

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
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float grad[4];
        load_row<4>(&grads[r][c * Entries::kCount + e4], grad);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
#pragma unroll
          for (int j = 0; j < kProjectIndices; ++j) sums[j][r] = fmaf(grad[e], values[j][e], sums[j][r]);
        }
      }
    }
  }
}

template <Distribution D, int kRows>
__global__ void __launch_bounds__(kThreads) project_grouped_kernel(const ProjectArgs args) {
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
      project_walk<D, kRows>(args.family, static_cast<uint32_t>(tile), calls, static_cast<uint32_t>(first_index),
                             grads, sums);
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

// Enough blocks for a full wave at about 128 registers a lane, and a bounded grid beyond.
int64_t wanted_blocks(int sm_count) { return 4LL * sm_count; }
int64_t grid_blocks(int64_t items, int sm_count) { return std::min<int64_t>(items, 16LL * sm_count); }

struct MixPlan {
  int64_t rows, position_blocks, items, blocks, k_per_split;
  int splits;
  size_t partial_bytes;
};

template <Distribution D>
MixPlan mix_plan(const GroupedProblem& p, int sm_count) {
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

template <Distribution D>
ProjectPlan project_plan(const GroupedProblem& p, int sm_count) {
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

bool empty_mix(const GroupedProblem& p) { return p.groups == 0 || p.numel == 0; }
bool empty_projection(const GroupedProblem& p) { return p.groups == 0 || p.k == 0 || p.numel == 0; }

template <Distribution D>
cudaError_t mix_grouped_as(const GroupedProblem& p, const float* coeffs, float* mixed, void* workspace,
                           int sm_count, cudaStream_t stream) {
  const MixPlan plan = mix_plan<D>(p, sm_count);
  MixArgs args{p.family, p.groups, p.numel, p.k, plan.k_per_split, plan.position_blocks, plan.items, p.scale,
               coeffs, mixed, plan.splits > 1};
  if (args.out_is_partial) args.out = static_cast<float*>(workspace);
  const dim3 grid(static_cast<unsigned>(plan.blocks), static_cast<unsigned>(plan.splits));
  with_rows<kMaxMixRows<D>>(plan.rows, [&](auto rows) { mix_grouped_kernel<D, decltype(rows)::value><<<grid, kThreads, 0, stream>>>(args); });
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess && args.out_is_partial) {
    status = sum_partials(args.out, plan.splits, p.groups * p.numel, nullptr, p.scale, mixed, sm_count, stream);
  }
  return status;
}

template <Distribution D>
cudaError_t project_grouped_as(const GroupedProblem& p, const float* grads, float* projected, void* workspace,
                               int sm_count, cudaStream_t stream) {
  const ProjectPlan plan = project_plan<D>(p, sm_count);
  float* partials = static_cast<float*>(workspace);
  const ProjectArgs args{p.family, p.groups, p.numel, p.k, plan.calls, plan.chunk_calls, plan.index_groups,
                         plan.row_chunks, plan.items, grads, partials};
  with_rows<kMaxProjectRows<D>>(plan.rows, [&](auto rows) {
    project_grouped_kernel<D, decltype(rows)::value><<<static_cast<unsigned>(plan.blocks), kThreads, 0, stream>>>(args);
  });
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) {
    status = sum_partials(partials, static_cast<int>(plan.chunks), p.groups * p.k, nullptr, p.scale, projected,
                          sm_count, stream);
  }
  return status;
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
  if (problem.groups == 0 || problem.k == 0) return cudaSuccess;
  // No positions: every projection is an empty sum.
  if (problem.numel == 0) return cudaMemsetAsync(projected, 0, sizeof(float) * problem.groups * problem.k, stream);
  return with_distribution(problem.distribution, [&](auto d) {
    return project_grouped_as<decltype(d)::value>(problem, grads, projected, workspace, sm_count, stream);
  });
}

}  // namespace nola
