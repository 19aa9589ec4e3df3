// Reference loops for the SASS budget, in CUDA: per basis index, the Philox calls of the entries a
// thread owns (the contract's minimum: one call per 4 uniform or 128 rademacher entries, every
// call made by the thread that uses it), the entries' values, and one FMA (mix) or one
// multiply-add into a running sum (projection) per entry; nothing else. Compiled with the flags of
// csrc/, never launched.
#include "philox.cuh"

namespace nola {

template <Distribution D>
struct Reference;

template <>
struct Reference<Distribution::kUniform> {
  static constexpr int kCalls = 4;  // as many independent chains per thread as generate.cu's lanes
  static constexpr int kEntries = 4;
  __device__ static float times(float v, const Words& w, int e) { return v * uniform_value(w.x[e]); }
};

template <>
struct Reference<Distribution::kRademacher> {
  static constexpr int kCalls = 1;
  static constexpr int kEntries = 128;
  __device__ static float times(float v, const Words& w, int e) { return apply_sign_bit(v, w.x[e / 32], e % 32); }
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
      const Words w = family.call(first_call + j, i);
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

}  // namespace nola
