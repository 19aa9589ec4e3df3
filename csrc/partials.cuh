// Deterministic reductions shared by the kernels: blocks write partial sums, one kernel adds them
// in a fixed order (never float atomics), and the caller's workspace holds the partials.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace nola {

constexpr int kWarpSize = 32;

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// out[j] = base[j] + scale * sum_{p < parts} partials[p * length + j], base optional.
template <typename Out>
__global__ void sum_partials_kernel(const float* __restrict__ partials, int parts, int64_t length,
                                    const float* __restrict__ base, float scale, Out* __restrict__ out) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < length;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int p = 0; p < parts; ++p) sum += partials[p * length + j];
    out[j] = from_float<Out>((base ? base[j] : 0.0f) + scale * sum);
  }
}

template <typename Out>
cudaError_t sum_partials(const float* partials, int parts, int64_t length, const float* base, float scale,
                         Out* out, int sm_count, cudaStream_t stream) {
  constexpr int kThreads = 256;
  if (length == 0) return cudaSuccess;
  const int64_t wanted = (length + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < 8LL * sm_count ? wanted : 8LL * sm_count);
  sum_partials_kernel<Out><<<blocks, kThreads, 0, stream>>>(partials, parts, length, base, scale, out);
  return cudaGetLastError();
}

// Workspace regions start on 256-byte boundaries, like cudaMalloc's.
constexpr size_t align_bytes(size_t bytes) { return (bytes + 255) & ~static_cast<size_t>(255); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace nola
