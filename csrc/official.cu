// Mixing and projection over an official CUDA layout family (csrc/official.cuh). Each entry is
// its own Philox call: a call's four words lie T entries apart, in other basis matrices. The
// blocks walk slices of positions and their warps take turns over the basis indices as in
// csrc/generate.cu; a lane owns a few positions (independent Philox chains) and steps their flat
// indices from one basis index to its warp's next by adding, not dividing.
#include "generate_plan.cuh"
#include "nola_cuda.h"
#include "official.cuh"
#include "partials.cuh"

namespace nola {
namespace {

constexpr int kThreads = kGenerateThreads;
constexpr int kWarps = kGenerateWarps;
// A lane's positions: 4 mix (independent Philox chains), 8 project, whose warp sum per basis index
// then serves twice the entries.
template <bool kProject>
constexpr int kPositionsPerLane = kProject ? 8 : 4;

struct OfficialArgs {
  RoundKeys keys;  // the seed's
  uint32_t threads;  // T
  OfficialCursor warp_stride;  // kWarps basis matrices: kWarps * numel entries
  int64_t numel, slices;
  int64_t k, k_per_split;
  float scale;
  const float* coeffs;
  float* mixed;  // the output, or (with a k-split) the partials, one row of numel per split
  bool mixed_is_partial;
  const float* grad;
  float* projected_partials;  // (gridDim.x, k)
};

template <OfficialDtype kDtype, bool kLegacy, bool kMix, bool kProject>
__global__ void __launch_bounds__(kThreads) official_kernel(const OfficialArgs args) {
  constexpr int kPerLane = kPositionsPerLane<kProject>, kSliceEntries = kWarpSize * kPerLane;
  __shared__ float warp_sums[kMix ? kWarps : 1][kMix ? kSliceEntries : 1];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t i_begin = blockIdx.y * args.k_per_split;
  const int64_t steps = min(args.k, i_begin + args.k_per_split) - i_begin;
  float* partials = kProject ? args.projected_partials + blockIdx.x * args.k + i_begin : nullptr;

  for (int64_t slice = blockIdx.x; slice < args.slices; slice += gridDim.x) {
    // Position j of this lane: slice * kSliceEntries + j * kWarpSize + lane (coalesced).
    OfficialCursor cursors[kPerLane];
    float mixed[kPerLane], grad[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t n = slice * kSliceEntries + j * kWarpSize + lane;
      cursors[j] = OfficialCursor::at(static_cast<uint64_t>((i_begin + warp) * args.numel + n), args.threads);
      mixed[j] = 0.0f;
      grad[j] = kProject && n < args.numel ? args.grad[n] : 0.0f;
    }
#pragma unroll 1
    for (int64_t step = warp; step < steps; step += kWarps) {
      const float weight = kMix ? __ldg(args.coeffs + i_begin + step) * args.scale : 0.0f;
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const float entry = official_entry<kDtype, kLegacy>(args.keys, cursors[j]);
        if (kMix) mixed[j] += weight * entry;
        if (kProject) dot += grad[j] * entry;
        cursors[j].advance(args.warp_stride, args.threads);
      }
      if (kProject) {
        dot = warp_sum(dot);
        // Only this warp of this block adds to this basis index, slice after slice.
        if (lane == 0) partials[step] = slice == blockIdx.x ? dot : partials[step] + dot;
      }
    }
    if constexpr (kMix) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) warp_sums[warp][j * kWarpSize + lane] = mixed[j];
      __syncthreads();
      for (int local = threadIdx.x; local < kSliceEntries; local += kThreads) {
        const int64_t n = slice * kSliceEntries + local;
        if (n >= args.numel) continue;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][local];
        args.mixed[(args.mixed_is_partial ? blockIdx.y * args.numel : 0) + n] = sum;
      }
      __syncthreads();  // the next slice rewrites warp_sums
    }
  }
}

GeneratePlan plan(const OfficialProblem& p, int sm_count) {
  const bool projects = p.projected != nullptr;
  const int slice_entries = kWarpSize * (projects ? kPositionsPerLane<true> : kPositionsPerLane<false>);
  return generate_plan(slice_entries, p.numel, p.k, !projects, projects, sm_count);
}

}  // namespace

size_t official_workspace_bytes(const OfficialProblem& problem, int sm_count) {
  const GeneratePlan p = plan(problem, sm_count);
  return p.mix_partial_bytes + p.project_partial_bytes;
}

cudaError_t official_generate(const OfficialProblem& problem, void* workspace, int sm_count, cudaStream_t stream) {
  const bool mixes = problem.mixed != nullptr, projects = problem.projected != nullptr;
  if (mixes == projects || (projects && !problem.grad) || (mixes && !problem.coeffs)) return cudaErrorInvalidValue;
  if (problem.numel == 0) {
    return projects ? cudaMemsetAsync(problem.projected, 0, sizeof(float) * problem.k, stream) : cudaSuccess;
  }
  const GeneratePlan p = plan(problem, sm_count);
  char* bytes = static_cast<char*>(workspace);
  float* mix_partials = reinterpret_cast<float*>(bytes);
  float* project_partials = reinterpret_cast<float*>(bytes + p.mix_partial_bytes);

  OfficialArgs args{};
  args.keys = problem.family.round_keys();
  args.threads = problem.family.threads(static_cast<uint64_t>(problem.k) * problem.numel);
  args.warp_stride = OfficialCursor::at(static_cast<uint64_t>(kWarps) * problem.numel, args.threads);
  args.numel = problem.numel;
  args.slices = p.slices;
  args.k = problem.k;
  args.k_per_split = p.k_per_split;
  args.scale = problem.scale;
  args.coeffs = problem.coeffs;
  args.mixed_is_partial = mixes && p.splits > 1;
  args.mixed = args.mixed_is_partial ? mix_partials : problem.mixed;
  args.grad = problem.grad;
  args.projected_partials = project_partials;
  const dim3 grid(static_cast<unsigned>(p.blocks), static_cast<unsigned>(p.splits));
  with_official_rounding(problem.family, [&](auto dtype, auto legacy) {
    constexpr OfficialDtype kDtype = decltype(dtype)::value;
    constexpr bool kLegacy = decltype(legacy)::value;
    if (mixes) {
      official_kernel<kDtype, kLegacy, true, false><<<grid, kThreads, 0, stream>>>(args);
    } else {
      official_kernel<kDtype, kLegacy, false, true><<<grid, kThreads, 0, stream>>>(args);
    }
  });
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess && args.mixed_is_partial) {
    status = sum_partials(mix_partials, p.splits, problem.numel, nullptr, 1.0f, problem.mixed, sm_count, stream);
  }
  if (status == cudaSuccess && projects) {
    status = sum_partials(project_partials, static_cast<int>(p.blocks), problem.k, nullptr, problem.scale,
                          problem.projected, sm_count, stream);
  }
  return status;
}

}  // namespace nola
