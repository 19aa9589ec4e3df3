// Mixing and projection over a basis family, each basis element generated once per launch.
//
// A block walks slices of flat positions (one slice at a time, the grid capped at a few waves);
// its 8 warps share each slice and take turns over the block's range of basis indices, and the
// range itself is split across blocks (the k-split) when the slices alone would not fill the GPU.
// A lane owns a few Philox calls' worth of positions and keeps their mixed sums and gradient
// values in registers through the basis loop. The warps' mixed sums meet in shared memory; each
// projection sum belongs to one warp, which adds it to its block's partial. A second kernel adds
// the partials in a fixed order.
#include "generate_plan.cuh"
#include "grouped_entries.cuh"
#include "nola_cuda.h"
#include "partials.cuh"

namespace nola {
namespace {

constexpr int kThreads = kGenerateThreads;
constexpr int kWarps = kGenerateWarps;

// A lane's "item" is the run of positions it fills from one Philox call: the call's 4 (uniform)
// or 8 (uniform16) entries, or one word's 32 bits (rademacher: the four lanes of a call group
// share each call, see rademacher_walk).
template <Distribution D>
struct Items {
  static constexpr int kEntries = is_rademacher(D) ? 32 : CallEntries<D>::kCount;
  // Independent Philox chains per lane hide latency and share the loop's work per basis index.
  static constexpr int kPerLane = is_rademacher(D) ? 1 : 4;
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
  RoundKeys keys;  // the family's round keys, its stream word 0 folded in
};

// One lane's view of one slice: its basis steps (i_begin + step for step = warp, warp + kWarps, ...
// below steps), its items and where its projections go.
struct LaneWalk {
  int warp, lane;
  int64_t slice, first_item, steps;
  uint32_t i_begin;  // with step, < 2^32
  const float* coeffs;
  float* partials;
  float scale;
  bool first_slice;  // this block's first: its partials start from 0

  // Sums each of the dots of kSteps basis steps (first_step + s * kWarps) over the warp and adds
  // it to its partial; only this warp of this block adds to those indices, slice after slice.
  // The first log2(kSteps) butterfly levels each halve the steps a lane holds (it keeps one half
  // and sends the other), so the steps share the shuffles: s ends in the lanes lane / (32 / kSteps)
  // == s, summed in warp_sum's order.
  template <int kSteps>
  __device__ void add_projections(int64_t first_step, float (&dots)[kSteps]) const {
    constexpr int kLanesPerStep = kWarpSize / kSteps;
#pragma unroll
    for (int half = kSteps / 2; half > 0; half /= 2) {
      const int offset = half * kLanesPerStep;
      const bool upper = lane & offset;
#pragma unroll
      for (int s = 0; s < half; ++s) {
        const float sent = upper ? dots[s] : dots[s + half];
        const float kept = upper ? dots[s + half] : dots[s];
        dots[s] = kept + __shfl_xor_sync(0xffffffffu, sent, offset);
      }
    }
    float dot = dots[0];
#pragma unroll
    for (int offset = kLanesPerStep / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    if (lane % kLanesPerStep == 0) {
      float& partial = partials[first_step + lane / kLanesPerStep * kWarps];
      // A first partial of -0 where 0 + dot gives +0 changes no result: sum_partials adds from +0.
      partial = first_slice ? dot : partial + dot;
    }
  }
};

// Call c of basis matrix `index`, its round keys (with stream word 0 folded in) read from the
// kernel's parameters: ptxas would otherwise add them up and redo the stream's first-round
// product in the basis loops, where registers are short.
template <Distribution D>
__device__ __forceinline__ Words basis_call(const GenerateArgs& args, uint32_t c, uint32_t index) {
  return philox4x32<rounds_of(D)>(c, index, 0u, args.family.stream1, args.keys);
}

// Basis steps per iteration of a uniform walk. A projection's steps share their warp sums'
// shuffles, at a few registers a step: uniform16's mix+project (2 blocks an SM at up to 128
// registers) takes two; the other kernels would lose a block an SM.
template <Distribution D, bool kMix, bool kProject>
constexpr int kWalkSteps = D == Distribution::kUniform16Philox7 && kMix && kProject ? 2 : 1;

// Uniform and uniform16: kSteps basis steps from first_step, for each of which each lane makes
// its kPerLane calls.
template <Distribution D, bool kMix, bool kProject, int kSteps>
__device__ __forceinline__ void uniform_steps(const GenerateArgs& args, const LaneWalk& walk, int64_t first_step,
                                              float (&mixed)[Items<D>::kPerLane][Items<D>::kEntries],
                                              const float (&grad)[Items<D>::kPerLane][Items<D>::kEntries]) {
  using It = Items<D>;
  using Entries = CallEntries<D>;
  float dots[kSteps];
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int64_t step = first_step + s * kWarps;
    const float weight = kMix ? __ldg(walk.coeffs + step) * walk.scale : 0.0f;
    dots[s] = 0.0f;
#pragma unroll
    for (int j = 0; j < It::kPerLane; ++j) {
      const Words words = basis_call<D>(args, static_cast<uint32_t>(walk.first_item + j * kWarpSize),
                                          walk.i_begin + static_cast<uint32_t>(step));
#pragma unroll
      for (int e = 0; e < It::kEntries; ++e) {
        if (kMix) mixed[j][e] += weight * Entries::value(words, e);
        if (kProject) dots[s] += grad[j][e] * Entries::value(words, e);
      }
    }
  }
  if (kProject) walk.add_projections(first_step, dots);
}

template <Distribution D, bool kMix, bool kProject>
__device__ void uniform_walk(const GenerateArgs& args, const LaneWalk& walk,
                             float (&mixed)[Items<D>::kPerLane][Items<D>::kEntries],
                             const float (&grad)[Items<D>::kPerLane][Items<D>::kEntries]) {
  constexpr int kSteps = kWalkSteps<D, kMix, kProject>;
  int64_t step = walk.warp;
#pragma unroll 1  // kSteps basis indices per iteration: the SASS budget counts per iteration
  for (; step + (kSteps - 1) * kWarps < walk.steps; step += kSteps * kWarps) {
    uniform_steps<D, kMix, kProject, kSteps>(args, walk, step, mixed, grad);
  }
  if constexpr (kSteps > 1) {
#pragma unroll 1
    for (; step < walk.steps; step += kWarps) uniform_steps<D, kMix, kProject, 1>(args, walk, step, mixed, grad);
  }
}

// Rademacher: the 4 lanes of a call group (lane = 4 g + w fills word w of one call) take four
// basis steps at a time; lane w makes the call of the w-th and loads its weight, and in round r
// each lane reads from lane (w + r) & 3 the word it owns of that lane's call, and the weight.
// Each call is made once, at the cost of 8 shuffles and a few selects per 128 entries.
template <Distribution D, bool kMix, bool kProject>
__device__ void rademacher_walk(const GenerateArgs& args, const LaneWalk& walk, float (&mixed)[1][32], const float (&grad)[1][32]) {
  const int word = walk.lane & 3;
  const uint32_t call = static_cast<uint32_t>(walk.first_item >> 2);
  int sources[4];  // the lane this lane reads from in round r
#pragma unroll
  for (int r = 0; r < 4; ++r) sources[r] = (walk.lane & ~3) | ((word + r) & 3);
#pragma unroll 1  // four basis indices per iteration: the SASS budget counts per iteration
  for (int64_t first = walk.warp; first < walk.steps; first += 4 * kWarps) {
    const int64_t own_step = first + word * kWarps;
    const bool own_live = own_step < walk.steps;
    const Words own = basis_call<D>(args, call, walk.i_begin + static_cast<uint32_t>(own_step));
    const float own_weight = kMix && own_live ? __ldg(walk.coeffs + own_step) * walk.scale : 0.0f;
    float dots[4];  // dots[r]: this lane's entries against step (word + r) & 3 of the four
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t bits = __shfl_sync(0xffffffffu, word_at(own, (word - r) & 3), sources[r]);
      const float weight = kMix ? __shfl_sync(0xffffffffu, own_weight, sources[r]) : 0.0f;
      float dot = apply_sign_bit(grad[0][0], bits, 0);
#pragma unroll
      for (int e = 0; e < 32; ++e) {
        if (kMix) mixed[0][e] += apply_sign_bit(weight, bits, e);
        if (kProject && e > 0) dot += apply_sign_bit(grad[0][e], bits, e);
      }
      dots[r] = dot;
    }
    if (kProject) {
      // Sum each step's dots over the warp, ending in the lanes of word = that step: first within
      // the call group, where each exchange halves the steps a lane holds, then across groups.
      const bool odd = word & 1;
      const float from_odd = __shfl_xor_sync(0xffffffffu, dots[1], 1);
      const float from_three = __shfl_xor_sync(0xffffffffu, dots[3], 1);
      const float same = dots[0] + (odd ? from_odd : from_three);        // step word
      const float opposite = dots[2] + (odd ? from_three : from_odd);    // step word + 2
      float dot = same + __shfl_xor_sync(0xffffffffu, opposite, 2);
#pragma unroll
      for (int offset = 4; offset < kWarpSize; offset *= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      // Lane w < 4 adds step w's sum; only this warp of this block adds to that basis index.
      if (walk.lane < 4 && own_live) {
        float& partial = walk.partials[own_step];
        partial = (walk.first_slice ? 0.0f : partial) + dot;
      }
    }
  }
}

template <Distribution D, bool kMix, bool kProject>
__global__ void __launch_bounds__(kThreads) generate_kernel(const GenerateArgs args) {
  using It = Items<D>;
  constexpr int kEntries = It::kEntries, kPerLane = It::kPerLane;
  constexpr int kSliceEntries = kWarpSize * kPerLane * kEntries;
  // A lane's 32 rademacher sums go to 32 banks: its entry e at e ^ lane (no bank conflicts on
  // the stores or on the reads of consecutive positions); uniform lanes store 4 adjacent floats
  // (one 16-byte store), uniform16 lanes 8 in two, the halves swapped where lane & 4 so that
  // lanes l and l + 4 of a store's quarter warp meet different banks.
  constexpr int kSwizzle = kEntries == kWarpSize ? kWarpSize - 1 : kEntries == 8 ? 4 : 0;
  __shared__ float warp_sums[kMix ? kWarps : 1][kMix ? kSliceEntries : 1];
  LaneWalk walk{};
  walk.lane = threadIdx.x % kWarpSize;
  walk.warp = threadIdx.x / kWarpSize;
  // This block's basis indices, i_begin + step for step < steps: up to 2^32 of them, past int.
  const int64_t i_begin = blockIdx.y * args.k_per_split;
  walk.i_begin = static_cast<uint32_t>(i_begin);
  walk.steps = min(args.k, i_begin + args.k_per_split) - i_begin;
  walk.coeffs = kMix ? args.coeffs + i_begin : nullptr;
  walk.partials = kProject ? args.projected_partials + blockIdx.x * args.k + i_begin : nullptr;
  walk.scale = args.scale;

  for (int64_t slice = blockIdx.x; slice < args.slices; slice += gridDim.x) {
    // Item j of this lane is first_item + j * kWarpSize; its entries sit at the slice's local
    // positions (j * kWarpSize + lane) * kEntries + e.
    walk.slice = slice;
    walk.first_slice = slice == blockIdx.x;
    walk.first_item = slice * (kWarpSize * kPerLane) + walk.lane;
    float mixed[kPerLane][kEntries];
    float grad[kPerLane][kEntries];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
#pragma unroll
      for (int e = 0; e < kEntries; ++e) {
        const int64_t n = (walk.first_item + j * kWarpSize) * kEntries + e;
        mixed[j][e] = 0.0f;
        grad[j][e] = kProject && n < args.numel ? args.grad[n] : 0.0f;
      }
    }

    if constexpr (is_rademacher(D)) {
      rademacher_walk<D, kMix, kProject>(args, walk, mixed, grad);
    } else {
      uniform_walk<D, kMix, kProject>(args, walk, mixed, grad);
    }

    if constexpr (kMix) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
#pragma unroll
        for (int e = 0; e < kEntries; ++e) {
          warp_sums[walk.warp][(j * kWarpSize + walk.lane) * kEntries + (e ^ (walk.lane & kSwizzle))] = mixed[j][e];
        }
      }
      __syncthreads();
      for (int local = threadIdx.x; local < kSliceEntries; local += kThreads) {
        const int64_t n = slice * kSliceEntries + local;
        if (n >= args.numel) continue;
        const int slot = local ^ ((local / kEntries) & kSwizzle);
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][slot];
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

int64_t entries_per_slice(Distribution distribution) {
  return with_distribution(distribution, [](auto d) -> int64_t {
    using It = Items<decltype(d)::value>;
    return kWarpSize * It::kPerLane * It::kEntries;
  });
}

GeneratePlan plan(const GenerateProblem& p, int sm_count) {
  return generate_plan(entries_per_slice(p.distribution), p.numel, p.k, p.mixed != nullptr, p.projected != nullptr,
                       sm_count);
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
  const GeneratePlan p = generate_plan(entries_per_slice(distribution), numel, k, mixes, projects, sm_count);
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
  args.keys = problem.family.folded_round_keys();
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
  with_distribution(problem.distribution, [&](auto d) { launch_parts<decltype(d)::value>(p, args, stream); });
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
