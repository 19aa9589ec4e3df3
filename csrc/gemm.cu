// The skinny products of the low-rank delta (one side is the rank, 1 to a few hundred): a tiled
// float32-accumulating GEMM over strided operands, so transposes cost nothing, with a
// deterministic split over the reduction dimension when the output is too small to fill the GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <limits>

#include "nola_cuda.h"
#include "partials.cuh"

namespace nola {
namespace {

constexpr int kThreads = 256;
constexpr int kTileM = 64, kTileN = 32, kTileK = 16;
constexpr int kThreadRows = 4, kThreadCols = 2;  // each thread's outputs: (64 x 32) / 256
constexpr int kRowGroups = kTileM / kThreadRows;
static_assert(kRowGroups * (kTileN / kThreadCols) == kThreads, "the tile's outputs cover the threads");
// Fewer reduction steps than this per split spend more on partial sums than they save.
constexpr int64_t kMinSplitLength = 256;
constexpr int64_t kMaxPartialEntries = 1 << 22;

template <typename T>
struct Operand {
  const T* data;
  int64_t row_stride, col_stride;
  __device__ float at(int64_t row, int64_t col) const {
    return to_float(data[row * row_stride + col * col_stride]);
  }
};

template <typename TA, typename TB, typename TC>
__global__ void __launch_bounds__(kThreads, 2)  // 2 blocks per SM: room for the 64-bit indexing without spills
    gemm_kernel(int64_t m, int64_t n, int64_t k, int64_t k_per_split, unsigned tiles_m, Operand<TA> a,
                Operand<TB> b, float alpha, TC* __restrict__ c, float* __restrict__ partials) {
  __shared__ float a_tile[kTileK][kTileM + 1];  // +1: loads along k hit distinct banks
  __shared__ float b_tile[kTileK][kTileN + 1];
  // Every output tile on grid axis x (y stops at 65535 blocks), down the rows first; splits on y.
  const int64_t m0 = static_cast<int64_t>(blockIdx.x % tiles_m) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x / tiles_m) * kTileN;
  const int64_t k_begin = blockIdx.y * k_per_split;
  const int64_t k_end = min(k, k_begin + k_per_split);
  const int row_group = threadIdx.x / (kTileN / kThreadCols);
  const int col_group = threadIdx.x % (kTileN / kThreadCols);
  // Consecutive threads load along whichever dimension of the operand is contiguous.
  const bool a_k_contiguous = a.col_stride == 1, b_n_contiguous = b.col_stride == 1;

  float acc[kThreadRows][kThreadCols] = {};
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    for (int e = threadIdx.x; e < kTileM * kTileK; e += kThreads) {
      const int mm = a_k_contiguous ? e / kTileK : e % kTileM;
      const int kk = a_k_contiguous ? e % kTileK : e / kTileM;
      const bool inside = m0 + mm < m && k0 + kk < k_end;
      a_tile[kk][mm] = inside ? a.at(m0 + mm, k0 + kk) : 0.0f;
    }
    for (int e = threadIdx.x; e < kTileK * kTileN; e += kThreads) {
      const int nn = b_n_contiguous ? e % kTileN : e / kTileK;
      const int kk = b_n_contiguous ? e / kTileN : e % kTileK;
      const bool inside = n0 + nn < n && k0 + kk < k_end;
      b_tile[kk][nn] = inside ? b.at(k0 + kk, n0 + nn) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
        for (int j = 0; j < kThreadCols; ++j) {
          acc[i][j] += a_tile[kk][row_group + i * kRowGroups] * b_tile[kk][col_group + j * (kTileN / kThreadCols)];
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
    for (int j = 0; j < kThreadCols; ++j) {
      const int64_t row = m0 + row_group + i * kRowGroups;
      const int64_t col = n0 + col_group + j * (kTileN / kThreadCols);
      if (row >= m || col >= n) continue;
      if (partials) {
        partials[blockIdx.y * m * n + row * n + col] = alpha * acc[i][j];
      } else {
        c[row * n + col] = from_float<TC>(alpha * acc[i][j]);
      }
    }
  }
}

struct GemmPlan {
  int64_t tiles_m, tiles_n, k_per_split;
  int splits;
  size_t partial_bytes;
};

GemmPlan plan(int64_t m, int64_t n, int64_t k, int sm_count) {
  GemmPlan p{ceil_div(m, kTileM), ceil_div(n, kTileN), 0, 1, 0};
  const int64_t tiles = p.tiles_m * p.tiles_n, wanted = 2LL * sm_count;
  int64_t splits = 1;
  if (tiles < wanted) {
    splits = std::min({ceil_div(wanted, tiles), ceil_div(k, kMinSplitLength), kMaxPartialEntries / (m * n)});
  }
  splits = std::max<int64_t>(1, splits);  // k = 0 (no tokens) still writes zeros
  p.k_per_split = ceil_div(ceil_div(std::max<int64_t>(k, 1), splits), kTileK) * kTileK;
  p.splits = static_cast<int>(ceil_div(std::max<int64_t>(k, 1), p.k_per_split));
  if (p.splits > 1) p.partial_bytes = align_bytes(sizeof(float) * p.splits * m * n);
  return p;
}

template <typename T>
Operand<T> operand(const MatrixView& view) {
  return Operand<T>{static_cast<const T*>(view.data), view.row_stride, view.col_stride};
}

template <typename TA, typename TB, typename TC>
cudaError_t launch(int64_t m, int64_t n, int64_t k, const MatrixView& a, const MatrixView& b, float alpha,
                   void* c, void* workspace, int sm_count, cudaStream_t stream) {
  const GemmPlan p = plan(m, n, k, sm_count);
  float* partials = p.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  const int64_t tiles = p.tiles_m * p.tiles_n;
  if (tiles > std::numeric_limits<int>::max()) return cudaErrorInvalidConfiguration;  // gridDim.x's limit
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.splits));
  gemm_kernel<TA, TB, TC><<<grid, kThreads, 0, stream>>>(m, n, k, p.k_per_split, static_cast<unsigned>(p.tiles_m),
                                                          operand<TA>(a), operand<TB>(b), alpha,
                                                          static_cast<TC*>(c), partials);
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess && partials) {
    status = sum_partials(partials, p.splits, m * n, nullptr, 1.0f, static_cast<TC*>(c), sm_count, stream);
  }
  return status;
}

// The one operand (or the output) in half precision picks the instantiation.
template <typename Half>
cudaError_t launch_with(int64_t m, int64_t n, int64_t k, const MatrixView& a, const MatrixView& b, float alpha,
                        void* c, void* workspace, int sm_count, cudaStream_t stream) {
  if (a.dtype != Dtype::kFloat32) {
    return launch<Half, float, float>(m, n, k, a, b, alpha, c, workspace, sm_count, stream);
  }
  if (b.dtype != Dtype::kFloat32) {
    return launch<float, Half, float>(m, n, k, a, b, alpha, c, workspace, sm_count, stream);
  }
  return launch<float, float, Half>(m, n, k, a, b, alpha, c, workspace, sm_count, stream);
}

}  // namespace

size_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int sm_count) {
  return m == 0 || n == 0 ? 0 : plan(m, n, k, sm_count).partial_bytes;
}

cudaError_t gemm(int64_t m, int64_t n, int64_t k, MatrixView a, MatrixView b, float alpha, void* c,
                 Dtype c_dtype, void* workspace, int sm_count, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const int halves = (a.dtype != Dtype::kFloat32) + (b.dtype != Dtype::kFloat32) + (c_dtype != Dtype::kFloat32);
  if (halves > 1) return cudaErrorInvalidValue;
  const Dtype half = a.dtype != Dtype::kFloat32 ? a.dtype : b.dtype != Dtype::kFloat32 ? b.dtype : c_dtype;
  switch (half) {
    case Dtype::kFloat16:
      return launch_with<__half>(m, n, k, a, b, alpha, c, workspace, sm_count, stream);
    case Dtype::kBFloat16:
      return launch_with<__nv_bfloat16>(m, n, k, a, b, alpha, c, workspace, sm_count, stream);
    default:
      return launch<float, float, float>(m, n, k, a, b, alpha, c, workspace, sm_count, stream);
  }
}

}  // namespace nola
