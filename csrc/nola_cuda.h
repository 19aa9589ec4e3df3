// The framework-free interface of the CUDA kernels: raw pointers, a stream, and a caller-provided
// workspace (sized by the *_workspace_bytes functions), so the kernels compile without torch and
// the binding stays one small file. Every reduction goes through per-block partials and a fixed-
// order sum, never float atomics, so results are deterministic run to run.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "official.cuh"
#include "philox.cuh"

namespace nola {

enum class Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One launch over a basis family: each basis element of the family's first `k` matrices is
// generated once, then mixed (mixed = offset + scale * sum_i coeffs[i] U_i, over `numel` flat
// positions) and/or projected (projected[i] = scale * <grad, U_i>). Null pointers switch a part off.
struct GenerateProblem {
  Family family;
  Distribution distribution;
  int64_t numel;
  int64_t k;  // at most 2^32 (the index is Philox counter word 1)
  float scale;
  const float* coeffs;  // (k,): mix input, or null
  const float* offset;  // (numel,): added to the mix, or null
  float* mixed;         // (numel,): mix output, or null
  const float* grad;    // (numel,): projection input, or null
  float* projected;     // (k,): projection output, or null
};

size_t generate_workspace_bytes(Distribution distribution, int64_t numel, int64_t k, bool mixes, bool projects,
                                int sm_count);
cudaError_t generate(const GenerateProblem& problem, void* workspace, int sm_count, cudaStream_t stream);

// One mix or projection over an official CUDA layout family (csrc/official.cu): entry n of basis
// matrix i is the family's entry at flat index i * numel + n of a (k, numel) draw. Exactly one of
// mixed (mixed = scale * sum_i coeffs[i] U_i) and projected (projected[i] = scale * <grad, U_i>)
// is set, with its input.
struct OfficialProblem {
  OfficialFamily family;
  int64_t numel;
  int64_t k;  // k * numel at most 2^40
  float scale;
  const float* coeffs;  // (k,)
  float* mixed;         // (numel,)
  const float* grad;    // (numel,)
  float* projected;     // (k,)
};

size_t official_workspace_bytes(const OfficialProblem& problem, int sm_count);
cudaError_t official_generate(const OfficialProblem& problem, void* workspace, int sm_count, cudaStream_t stream);

// Grouped generation over one basis family: G rows of coefficients or gradients share every
// generated entry (csrc/grouped.cu). mix_grouped: mixed[g, n] = scale * sum_i coeffs[g, i] U_i[n],
// coeffs (G, k), mixed (G, numel); project_grouped: projected[g, i] = scale * <grads[g], U_i>,
// grads (G, numel), projected (G, k). All contiguous float32.
struct GroupedProblem {
  Family family;
  Distribution distribution;
  int64_t groups;  // G
  int64_t numel;
  int64_t k;  // at most 2^32
  float scale;
};

size_t mix_grouped_workspace_bytes(const GroupedProblem& problem, int sm_count);
cudaError_t mix_grouped(const GroupedProblem& problem, const float* coeffs, float* mixed, void* workspace,
                        int sm_count, cudaStream_t stream);
size_t project_grouped_workspace_bytes(const GroupedProblem& problem, int sm_count);
cudaError_t project_grouped(const GroupedProblem& problem, const float* grads, float* projected, void* workspace,
                            int sm_count, cudaStream_t stream);

// The same over an official CUDA layout family: entry n of basis matrix i is the family's entry at
// flat index i * numel + n of a (k, numel) draw (as OfficialProblem), each its own Philox call.
struct OfficialGroupedProblem {
  OfficialFamily family;
  int64_t groups;  // G
  int64_t numel;
  int64_t k;  // k * numel at most 2^40
  float scale;
};

size_t mix_grouped_workspace_bytes(const OfficialGroupedProblem& problem, int sm_count);
cudaError_t mix_grouped(const OfficialGroupedProblem& problem, const float* coeffs, float* mixed, void* workspace,
                        int sm_count, cudaStream_t stream);
size_t project_grouped_workspace_bytes(const OfficialGroupedProblem& problem, int sm_count);
cudaError_t project_grouped(const OfficialGroupedProblem& problem, const float* grads, float* projected,
                            void* workspace, int sm_count, cudaStream_t stream);

// A matrix operand: element (row, col) lives at data[row * row_stride + col * col_stride].
struct MatrixView {
  const void* data;
  Dtype dtype;
  int64_t row_stride, col_stride;
};

// c = alpha * a b with a (m x k) and b (k x n), accumulated in float32; c is contiguous (m x n)
// in c_dtype. At most one of a, b, c may be a half-precision type.
size_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int sm_count);
cudaError_t gemm(int64_t m, int64_t n, int64_t k, MatrixView a, MatrixView b, float alpha, void* c,
                 Dtype c_dtype, void* workspace, int sm_count, cudaStream_t stream);

// The fused NOLA delta (docs/spec.md), with A = a0 + mix(alpha) (rank x in) and
// B = b0 + mix(beta) (out x rank), each factor generated once per call:
//   forward:  h = x A^T (float32, tokens x rank), delta = scaling * h B^T (x's dtype);
//   backward: grad_b = scaling * grad^T h, grad_beta = project(grad_b), grad_h = scaling * grad B,
//             grad_a = grad_h^T x, grad_alpha = project(grad_a), grad_x = grad_h A (x's dtype).
struct LowRankProblem {
  int64_t tokens, in_features, out_features;
  int rank;
  int64_t k, l;
  Dtype dtype;  // of x, grad, delta and grad_x
  Family family_a, family_b;
  Distribution distribution;
  float scaling;
  const void* x;         // (tokens, in)
  const float* alpha;    // (k,)
  const float* beta;     // (l,)
  const float* a0;       // (rank, in) or null
  const float* b0;       // (out, rank) or null
};

struct LowRankForward {
  void* delta;  // (tokens, out)
  float* h;     // (tokens, rank)
};

struct LowRankBackward {
  const void* grad;  // (tokens, out)
  const float* h;    // (tokens, rank), from the forward
  void* grad_x;      // (tokens, in)
  float* grad_alpha; // (k,)
  float* grad_beta;  // (l,)
  float* grad_a;     // (rank, in)
  float* grad_b;     // (out, rank)
};

size_t lowrank_workspace_bytes(const LowRankProblem& problem, int sm_count);
cudaError_t lowrank_forward(const LowRankProblem& problem, const LowRankForward& out, void* workspace,
                            int sm_count, cudaStream_t stream);
cudaError_t lowrank_backward(const LowRankProblem& problem, const LowRankBackward& io, void* workspace,
                             int sm_count, cudaStream_t stream);

// The integer-ALU bound of generation: `calls` Philox calls (basis 0 of the family) whose uniform
// values are summed and nothing else; writes one float per block to block_sums (rate_blocks()).
int rate_blocks(int sm_count);
cudaError_t philox_rate(Family family, int64_t calls, float* block_sums, int sm_count, cudaStream_t stream);

}  // namespace nola
