// The integer-ALU bound of basis generation: Philox calls turned into uniform values and summed,
// nothing else. The benchmarks compare the fused kernels' generation rate with this one's.
#include "nola_cuda.h"
#include "partials.cuh"

namespace nola {
namespace {

constexpr int kThreads = 256;
constexpr int kChains = 4;  // independent calls in flight per thread, as in generate.cu

__device__ __forceinline__ float uniform_sum(const Words& w) {
  return uniform_value(w.x[0]) + uniform_value(w.x[1]) + uniform_value(w.x[2]) + uniform_value(w.x[3]);
}

// Thread t's calls: first + j for j < kChains in each group first = t * kChains + g * stride; the
// grid's whole rounds of groups need no bound checks (the hot loop: the mix loop's instructions
// per call), the last round checks each call.
__global__ void __launch_bounds__(kThreads) philox_rate_kernel(Family family, int64_t calls, float* block_sums) {
  __shared__ float warp_sums[kThreads / kWarpSize];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * kChains;
  const int64_t whole = calls / stride * stride;
  const int64_t start = (blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x) * kChains;
  float sum = 0.0f;
  for (int64_t first = start; first < whole; first += stride) {
#pragma unroll
    for (int j = 0; j < kChains; ++j) sum += uniform_sum(family.call(static_cast<uint32_t>(first + j), 0));
  }
#pragma unroll
  for (int j = 0; j < kChains; ++j) {
    const int64_t call = whole + start + j;
    if (call < calls) sum += uniform_sum(family.call(static_cast<uint32_t>(call), 0));
  }
  sum = warp_sum(sum);
  if (threadIdx.x % kWarpSize == 0) warp_sums[threadIdx.x / kWarpSize] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (float s : warp_sums) total += s;
    block_sums[blockIdx.x] = total;
  }
}

}  // namespace

int rate_blocks(int sm_count) { return 8 * sm_count; }

cudaError_t philox_rate(Family family, int64_t calls, float* block_sums, int sm_count, cudaStream_t stream) {
  philox_rate_kernel<<<rate_blocks(sm_count), kThreads, 0, stream>>>(family, calls, block_sums);
  return cudaGetLastError();
}

}  // namespace nola
