// Reference loops for the SASS budget, in CUDA: per basis index, the Philox calls of the entries a
// thread owns (the contract's minimum: one call per 4 uniform, 8 uniform16 or 128 rademacher
// entries, with the distribution's rounds, every call made by the thread that uses it; one call per
// entry for the official CUDA layout families), the
// entries' values, and one FMA (mix) or one multiply-add into a running sum (projection) per
// entry; nothing else. Compiled with the flags of csrc/, never launched.
#include "grouped_entries.cuh"
#include "official.cuh"
#include "philox.cuh"

namespace nola {

template <Distribution D>
struct Reference {
  static constexpr int kCalls = is_rademacher(D) ? 1 : 4;  // as many chains per thread as generate.cu's lanes
  static constexpr int kEntries = CallEntries<D>::kCount;
  __device__ static float times(float v, const Words& w, int e) {
    if constexpr (is_rademacher(D)) {
      return apply_sign_bit(v, w.x[e / 32], e % 32);
    } else {
      return v * CallEntries<D>::value(w, e);
    }
  }
};

template <Distribution D, bool kMix, bool kProject>
__global__ void reference_kernel(Family family, uint32_t k, const float* coeffs, const float* grad, float* out) {
  using R = Reference<D>;
  const uint32_t first_call = (blockIdx.x * blockDim.x + threadIdx.x) * R::kCalls;
  float mixed[R::kCalls][R::kEntries];
  float g[R::kCalls][R::kEntries];
#pragma unroll
  for (int j = 0; j < R::kCalls; ++j) {
#pragma unroll
    for (int e = 0; e < R::kEntries; ++e) {
      mixed[j][e] = 0.0f;
      g[j][e] = kProject ? grad[(first_call + j) * R::kEntries + e] : 0.0f;
    }
  }
  float dot = 0.0f;
#pragma unroll 1
  for (uint32_t i = 0; i < k; ++i) {
    const float weight = kMix ? __ldg(coeffs + i) : 0.0f;
#pragma unroll
    for (int j = 0; j < R::kCalls; ++j) {
      const Words w = CallEntries<D>::call(family, first_call + j, i);
#pragma unroll
      for (int e = 0; e < R::kEntries; ++e) {
        if (kMix) mixed[j][e] += R::times(weight, w, e);
        if (kProject) dot += R::times(g[j][e], w, e);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < R::kCalls; ++j) {
#pragma unroll
    for (int e = 0; e < R::kEntries; ++e) out[(first_call + j) * R::kEntries + e] = mixed[j][e] + dot;
  }
}

template __global__ void reference_kernel<Distribution::kUniform, true, false>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kUniform, false, true>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kUniform, true, true>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kRademacher, true, false>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kRademacher, false, true>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kRademacher, true, true>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kUniform16Philox7, true, false>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kUniform16Philox7, false, true>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kUniform16Philox7, true, true>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kRademacherPhilox7, true, false>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kRademacherPhilox7, false, true>(Family, uint32_t, const float*, const float*, float*);
template __global__ void reference_kernel<Distribution::kRademacherPhilox7, true, true>(Family, uint32_t, const float*, const float*, float*);

// The grouped kernels' references (csrc/grouped.cu): per iteration a thread generates the same
// entries as the kernel's lane with the same calls, and does one FMA per entry and row; the
// mix also reads each basis index's coefficients (4 rows a load where the rows allow), the
// projection keeps its gradients in registers. Uniform mix: one call of 4 (uniform16: 8) positions
// per index; rademacher mix: one call whose 4 words serve 4 indices; projection: one call for each
// of 4 indices.
template <int kRows>
__device__ void load_weights(const float* source, float (&out)[kRows]) {
  if constexpr (kRows % 4 == 0) {
#pragma unroll
    for (int r = 0; r < kRows; r += 4) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(source + r));
      out[r] = v.x, out[r + 1] = v.y, out[r + 2] = v.z, out[r + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int r = 0; r < kRows; ++r) out[r] = __ldg(source + r);
  }
}

template <Distribution D, int kRows>
__global__ void mix_grouped_reference(Family family, uint32_t k, const float* coeffs, float* out) {
  constexpr bool kRademacher = is_rademacher(D);
  constexpr int kPositions = kRademacher ? 32 : CallEntries<D>::kCount, kStepsPerCall = kRademacher ? 4 : 1;
  const uint32_t call = blockIdx.x * blockDim.x + threadIdx.x;
  float sums[kRows][kPositions];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int e = 0; e < kPositions; ++e) sums[r][e] = 0.0f;
  }
#pragma unroll 1
  for (uint32_t i = 0; i < k; i += kStepsPerCall) {
    const Words words = CallEntries<D>::call(family, call, i);
#pragma unroll
    for (int s = 0; s < kStepsPerCall; ++s) {
      float weight[kRows];
      load_weights<kRows>(coeffs + (i + s) * kRows, weight);
#pragma unroll
      for (int e = 0; e < kPositions; ++e) {
        const float value = kRademacher ? rademacher_value(words.x[s], e) : CallEntries<D>::value(words, e);
#pragma unroll
        for (int r = 0; r < kRows; ++r) sums[r][e] = fmaf(weight[r], value, sums[r][e]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int e = 0; e < kPositions; ++e) out[(r * gridDim.x * blockDim.x + call) * kPositions + e] = sums[r][e];
  }
}

template <Distribution D, int kRows>
__global__ void project_grouped_reference(Family family, uint32_t calls, const float* grads, float* out) {
  using Entries = CallEntries<D>;
  const uint32_t first_index = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
  float grad[kRows][4];
  float sums[4][kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int e = 0; e < 4; ++e) grad[r][e] = grads[r * 4 + e];
#pragma unroll
    for (int j = 0; j < 4; ++j) sums[j][r] = 0.0f;
  }
#pragma unroll 1
  for (uint32_t c = 0; c < calls; ++c) {
    Words words[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) words[j] = Entries::call(family, c, first_index + j);
#pragma unroll
    for (int e = 0; e < Entries::kCount; ++e) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float value = Entries::value(words[j], e);
#pragma unroll
        for (int r = 0; r < kRows; ++r) sums[j][r] = fmaf(grad[r][e % 4], value, sums[j][r]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) out[(first_index + j) * kRows + r] = sums[j][r];
  }
}

// The row counts grouped.cu launches for G > 8 (bench/sass/budget.py, CUDA_GROUPED_LOOPS).
template __global__ void mix_grouped_reference<Distribution::kUniform, 16>(Family, uint32_t, const float*, float*);
template __global__ void mix_grouped_reference<Distribution::kRademacher, 2>(Family, uint32_t, const float*, float*);
template __global__ void mix_grouped_reference<Distribution::kUniform16Philox7, 8>(Family, uint32_t, const float*, float*);
template __global__ void mix_grouped_reference<Distribution::kRademacherPhilox7, 2>(Family, uint32_t, const float*, float*);
template __global__ void project_grouped_reference<Distribution::kUniform, 16>(Family, uint32_t, const float*, float*);
template __global__ void project_grouped_reference<Distribution::kRademacher, 4>(Family, uint32_t, const float*, float*);
template __global__ void project_grouped_reference<Distribution::kUniform16Philox7, 16>(Family, uint32_t, const float*, float*);
template __global__ void project_grouped_reference<Distribution::kRademacherPhilox7, 4>(Family, uint32_t, const float*, float*);

// The official CUDA layout families' reference (csrc/official.cu, float32): per basis index, a
// thread's 4 entries of one matrix, each its own Philox4x32-10 call (the family's minimum: a
// call's other words lie T entries away, in other matrices), each entry's flat index stepped by
// one matrix (numel entries, split as (stripes, threads) of the draw: no division), the float32
// draw and one FMA per entry.
template <bool kMix, bool kProject>
__global__ void official_reference_kernel(RoundKeys keys, uint32_t threads, OfficialCursor matrix, uint32_t k,
                                          const float* coeffs, const float* grad, float* out) {
  constexpr int kEntries = 4;
  const uint32_t first = (blockIdx.x * blockDim.x + threadIdx.x) * kEntries;
  OfficialCursor cursors[kEntries];
  float mixed[kEntries], g[kEntries];
#pragma unroll
  for (int j = 0; j < kEntries; ++j) {
    cursors[j] = OfficialCursor::at(first + j, threads);
    mixed[j] = 0.0f;
    g[j] = kProject ? grad[first + j] : 0.0f;
  }
  float dot = 0.0f;
#pragma unroll 1
  for (uint32_t i = 0; i < k; ++i) {
    const float weight = kMix ? __ldg(coeffs + i) : 0.0f;
#pragma unroll
    for (int j = 0; j < kEntries; ++j) {
      const float value = official_entry<OfficialDtype::kFloat32, false>(keys, cursors[j]);
      if (kMix) mixed[j] += weight * value;
      if (kProject) dot += g[j] * value;
      cursors[j].advance(matrix, threads);
    }
  }
#pragma unroll
  for (int j = 0; j < kEntries; ++j) out[first + j] = mixed[j] + dot;
}

template __global__ void official_reference_kernel<true, false>(RoundKeys, uint32_t, OfficialCursor, uint32_t,
                                                                const float*, const float*, float*);
template __global__ void official_reference_kernel<false, true>(RoundKeys, uint32_t, OfficialCursor, uint32_t,
                                                                const float*, const float*, float*);

}  // namespace nola
