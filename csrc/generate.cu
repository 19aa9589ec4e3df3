// Mixing and projection over a basis family, each basis element generated once per launch.
//
// A block walks slices of flat positions (one slice at a time, the grid capped at a few waves);
// its 8 warps share each slice and take turns over the block's range of basis indices, and the
// range itself is split across blocks (the k-split) when the slices alone would not fill the GPU.
// A lane owns a few Philox calls' worth of positions and keeps their mixed sums and gradient
// values in registers through the basis loop. The warps' mixed sums meet in shared memory; each
// projection sum belongs to one warp, which adds it to its block's partial. A second kernel adds
// the partials in a fixed order.
#include <algorithm>

#include "nola_cuda.h"
#include "partials.cuh"

namespace nola {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
// Fewer basis indices than this per k-split (4 per warp) spend more on partial sums than they save.
constexpr int kMinIndicesPerSplit = 4 * kWarps;
// The partials stay under 16 MiB: the mix partials of a k-split, and the projection partials
// (blocks x k; past this many basis indices, fewer blocks and a wider k-split fill the GPU).
constexpr int64_t kMaxMixPartialEntries = 1 << 22;
constexpr int64_t kMaxProjectPartialEntries = 1 << 22;

// A lane's "item" is the run of positions it fills from one Philox call: the call's four
// words (uniform), or one word's 32 bits (rademacher; the four lanes sharing a call each
// recompute it, which is cheaper than exchanging words at 32 entries per call).
template <Distribution D>
struct Items;

template <>
struct Items<Distribution::kUniform> {
  static constexpr int kEntries = 4;
  static constexpr int kPerLane = 4;  // independent Philox chains per lane hide latency
  __device__ static Words call(const Family& family, int64_t item, uint32_t index) {
    return family.call(static_cast<uint32_t>(item), index);
  }
  __device__ static float times(float v, const Words& w, int64_t, int e) { return v * uniform_value(w.x[e]); }
};

template <>
struct Items<Distribution::kRademacher> {
  static constexpr int kEntries = 32;
  static constexpr int kPerLane = 1;
  __device__ static Words call(const Family& family, int64_t item, uint32_t index) {
    return family.call(static_cast<uint32_t>(item >> 2), index);
  }
  __device__ static float times(float v, const Words& w, int64_t item, int e) {
    return apply_sign_bit(v, w.x[item & 3], e);
  }
};

struct GenerateArgs {
  Family family;
  int64_t numel, slices;
  int64_t k, k_per_split;  // up to 2^32 basis indices, past int
  float scale;
  const float* coeffs;
  const float* offset;
  float* mixed;  // the output, or (with a k-split) the partials, one row of numel per split
  bool mixed_is_partial;
  const float* grad;
  float* projected_partials;  // (gridDim.x, k)
};

template <Distribution D, bool kMix, bool kProject>
__global__ void __launch_bounds__(kThreads) generate_kernel(const GenerateArgs args) {
  using It = Items<D>;
  constexpr int kEntries = It::kEntries, kPerLane = It::kPerLane;
  constexpr int kSliceEntries = kWarpSize * kPerLane * kEntries;
  __shared__ float warp_sums[kMix ? kWarps : 1][kMix ? kSliceEntries : 1];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  // This block's basis indices, i_begin + step for step < steps: up to 2^32 of them, past int.
  const int64_t i_begin = blockIdx.y * args.k_per_split;
  const int64_t steps = min(args.k, i_begin + args.k_per_split) - i_begin;
  const float* const coeffs = kMix ? args.coeffs + i_begin : nullptr;
  float* const partials = kProject ? args.projected_partials + blockIdx.x * args.k + i_begin : nullptr;

  for (int64_t slice = blockIdx.x; slice < args.slices; slice += gridDim.x) {
    // Item j of this lane is first_item + j * kWarpSize; its entries sit at the slice's local
    // positions (j * kWarpSize + lane) * kEntries + e.
    const int64_t first_item = slice * (kWarpSize * kPerLane) + lane;
    float mixed[kPerLane][kEntries];
    float grad[kPerLane][kEntries];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
#pragma unroll
      for (int e = 0; e < kEntries; ++e) {
        const int64_t n = (first_item + j * kWarpSize) * kEntries + e;
        mixed[j][e] = 0.0f;
        grad[j][e] = kProject && n < args.numel ? args.grad[n] : 0.0f;
      }
    }

    for (int64_t step = warp; step < steps; step += kWarps) {
      const uint32_t index = static_cast<uint32_t>(i_begin + step);  // < 2^32
      const float weight = kMix ? __ldg(coeffs + step) * args.scale : 0.0f;
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t item = first_item + j * kWarpSize;
        const Words words = It::call(args.family, item, index);
#pragma unroll
        for (int e = 0; e < kEntries; ++e) {
          if (kMix) mixed[j][e] += It::times(weight, words, item, e);
          if (kProject) dot += It::times(grad[j][e], words, item, e);
        }
      }
      if (kProject) {
        dot = warp_sum(dot);
        if (lane == 0) {  // only this warp of this block adds to index i, slice after slice
          float& partial = partials[step];
          partial = (slice == blockIdx.x ? 0.0f : partial) + dot;
        }
      }
    }

    if constexpr (kMix) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
#pragma unroll
        for (int e = 0; e < kEntries; ++e) warp_sums[warp][(j * kWarpSize + lane) * kEntries + e] = mixed[j][e];
      }
      __syncthreads();
      for (int local = threadIdx.x; local < kSliceEntries; local += kThreads) {
        const int64_t n = slice * kSliceEntries + local;
        if (n >= args.numel) continue;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][local];
        if (args.mixed_is_partial) {
          args.mixed[blockIdx.y * args.numel + n] = sum;
        } else {
          args.mixed[n] = (args.offset ? args.offset[n] : 0.0f) + sum;
        }
      }
      __syncthreads();  // the next slice rewrites warp_sums
    }
  }
}

template <Distribution D>
constexpr int64_t entries_per_slice() {
  return kWarpSize * Items<D>::kPerLane * Items<D>::kEntries;
}

int64_t entries_per_slice(Distribution distribution) {
  return distribution == Distribution::kUniform ? entries_per_slice<Distribution::kUniform>()
                                                : entries_per_slice<Distribution::kRademacher>();
}

struct GeneratePlan {
  int64_t slices, blocks;  // block b walks slices b, b + blocks, ...
  int splits;
  int64_t k_per_split;
  size_t mix_partial_bytes, project_partial_bytes;
};

// No positions: no launch and no workspace (generate() only zeroes the projection).
GeneratePlan plan(Distribution distribution, int64_t numel, int64_t k, bool mixes, bool projects, int sm_count) {
  GeneratePlan result{};
  if (numel == 0) return result;
  const int64_t wanted_blocks = 4LL * sm_count;  // as many as run at once at about 64 registers
  result.slices = ceil_div(numel, entries_per_slice(distribution));
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

GeneratePlan plan(const GenerateProblem& p, int sm_count) {
  return plan(p.distribution, p.numel, p.k, p.mixed != nullptr, p.projected != nullptr, sm_count);
}

template <Distribution D, bool kMix, bool kProject>
void launch(const GeneratePlan& plan, const GenerateArgs& args, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.blocks), static_cast<unsigned>(plan.splits));
  generate_kernel<D, kMix, kProject><<<grid, kThreads, 0, stream>>>(args);
}

template <Distribution D>
void launch_parts(const GeneratePlan& plan, const GenerateArgs& args, cudaStream_t stream) {
  if (args.mixed && args.grad) {
    launch<D, true, true>(plan, args, stream);
  } else if (args.mixed) {
    launch<D, true, false>(plan, args, stream);
  } else {
    launch<D, false, true>(plan, args, stream);
  }
}

}  // namespace

size_t generate_workspace_bytes(Distribution distribution, int64_t numel, int64_t k, bool mixes, bool projects,
                                int sm_count) {
  const GeneratePlan p = plan(distribution, numel, k, mixes, projects, sm_count);
  return p.mix_partial_bytes + p.project_partial_bytes;
}

cudaError_t generate(const GenerateProblem& problem, void* workspace, int sm_count, cudaStream_t stream) {
  if (problem.projected && !problem.grad) return cudaErrorInvalidValue;  // a projection needs its input
  if (!problem.mixed && !problem.projected) return cudaSuccess;
  // No positions: the mix is empty and every projection is an empty sum.
  if (problem.numel == 0) {
    return problem.projected ? cudaMemsetAsync(problem.projected, 0, sizeof(float) * problem.k, stream)
                             : cudaSuccess;
  }
  const GeneratePlan p = plan(problem, sm_count);
  char* bytes = static_cast<char*>(workspace);
  float* mix_partials = reinterpret_cast<float*>(bytes);
  float* project_partials = reinterpret_cast<float*>(bytes + p.mix_partial_bytes);

  GenerateArgs args{};
  args.family = problem.family;
  args.numel = problem.numel;
  args.slices = p.slices;
  args.k = problem.k;
  args.k_per_split = p.k_per_split;
  args.scale = problem.scale;
  args.coeffs = problem.coeffs;
  args.offset = problem.offset;
  args.mixed_is_partial = problem.mixed && p.splits > 1;
  args.mixed = args.mixed_is_partial ? mix_partials : problem.mixed;
  args.grad = problem.projected ? problem.grad : nullptr;
  args.projected_partials = project_partials;
  if (problem.distribution == Distribution::kUniform) {
    launch_parts<Distribution::kUniform>(p, args, stream);
  } else {
    launch_parts<Distribution::kRademacher>(p, args, stream);
  }
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess && args.mixed_is_partial) {
    status = sum_partials(mix_partials, p.splits, problem.numel, problem.offset, 1.0f, problem.mixed,
                          sm_count, stream);
  }
  if (status == cudaSuccess && args.grad) {
    status = sum_partials(project_partials, static_cast<int>(p.blocks), problem.k, nullptr,
                          problem.scale, problem.projected, sm_count, stream);
  }
  return status;
}

}  // namespace nola
