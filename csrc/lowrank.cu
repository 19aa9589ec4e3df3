// The fused NOLA delta and its gradients as a short sequence of launches on one stream. Each
// factor (A: rank x in, B: out x rank, no larger than LoRA's) is generated once per call by one
// launch that also projects its gradient, so no basis matrix is ever stored; the products that
// remain are the skinny GEMMs of gemm.cu.
#include <algorithm>

#include "nola_cuda.h"
#include "partials.cuh"

namespace nola {
namespace {

GenerateProblem factor_a(const LowRankProblem& p, float* a, const float* grad_a, float* grad_alpha) {
  return GenerateProblem{p.family_a, p.distribution, p.rank * p.in_features, p.k,
                         default_mix_scale(p.k), p.alpha, p.a0, a, grad_a, grad_alpha};
}

GenerateProblem factor_b(const LowRankProblem& p, float* b, const float* grad_b, float* grad_beta) {
  return GenerateProblem{p.family_b, p.distribution, p.out_features * p.rank, p.l,
                         default_mix_scale(p.l), p.beta, p.b0, b, grad_b, grad_beta};
}

MatrixView row_major(const void* data, Dtype dtype, int64_t cols) { return MatrixView{data, dtype, cols, 1}; }
MatrixView transposed(const void* data, Dtype dtype, int64_t cols) { return MatrixView{data, dtype, 1, cols}; }

// The workspace: the two factors, grad_h, then scratch shared by the launches in turn.
struct Layout {
  size_t a, b, grad_h, scratch;
  size_t total() const { return a + b + grad_h + scratch; }
};

Layout layout(const LowRankProblem& p, int sm_count) {
  const int64_t t = p.tokens, in = p.in_features, out = p.out_features, r = p.rank;
  const size_t scratch = std::max({
      generate_workspace_bytes(p.distribution, r * in, p.k, true, true, sm_count),   // A, grad_alpha
      generate_workspace_bytes(p.distribution, out * r, p.l, true, true, sm_count),  // B, grad_beta
      gemm_workspace_bytes(t, r, in, sm_count),   // h
      gemm_workspace_bytes(t, out, r, sm_count),  // delta
      gemm_workspace_bytes(out, r, t, sm_count),  // grad_b
      gemm_workspace_bytes(t, r, out, sm_count),  // grad_h
      gemm_workspace_bytes(r, in, t, sm_count),   // grad_a
      gemm_workspace_bytes(t, in, r, sm_count),   // grad_x
  });
  return Layout{align_bytes(sizeof(float) * r * in), align_bytes(sizeof(float) * out * r),
                align_bytes(sizeof(float) * t * r), scratch};
}

struct Buffers {
  float *a, *b, *grad_h;
  void* scratch;
};

Buffers buffers(const Layout& l, void* workspace) {
  char* base = static_cast<char*>(workspace);
  return Buffers{reinterpret_cast<float*>(base), reinterpret_cast<float*>(base + l.a),
                 reinterpret_cast<float*>(base + l.a + l.b), base + l.a + l.b + l.grad_h};
}

}  // namespace

size_t lowrank_workspace_bytes(const LowRankProblem& problem, int sm_count) {
  return layout(problem, sm_count).total();
}

cudaError_t lowrank_forward(const LowRankProblem& p, const LowRankForward& out, void* workspace, int sm_count,
                            cudaStream_t stream) {
  if (p.tokens == 0) return cudaSuccess;  // delta and h are empty: no factor to generate
  const Buffers w = buffers(layout(p, sm_count), workspace);
  const int64_t t = p.tokens, r = p.rank;
  cudaError_t status = generate(factor_a(p, w.a, nullptr, nullptr), w.scratch, sm_count, stream);
  if (status == cudaSuccess) status = generate(factor_b(p, w.b, nullptr, nullptr), w.scratch, sm_count, stream);
  if (status == cudaSuccess) {
    status = gemm(t, r, p.in_features, row_major(p.x, p.dtype, p.in_features),
                  transposed(w.a, Dtype::kFloat32, p.in_features), 1.0f, out.h, Dtype::kFloat32, w.scratch,
                  sm_count, stream);
  }
  if (status == cudaSuccess) {
    status = gemm(t, p.out_features, r, row_major(out.h, Dtype::kFloat32, r), transposed(w.b, Dtype::kFloat32, r),
                  p.scaling, out.delta, p.dtype, w.scratch, sm_count, stream);
  }
  return status;
}

cudaError_t lowrank_backward(const LowRankProblem& p, const LowRankBackward& io, void* workspace, int sm_count,
                             cudaStream_t stream) {
  const Buffers w = buffers(layout(p, sm_count), workspace);
  const int64_t t = p.tokens, in = p.in_features, out = p.out_features, r = p.rank;
  // grad_b = scaling * grad^T h; B and grad_beta in one pass over the V_j.
  cudaError_t status = gemm(out, r, t, transposed(io.grad, p.dtype, out), row_major(io.h, Dtype::kFloat32, r),
                            p.scaling, io.grad_b, Dtype::kFloat32, w.scratch, sm_count, stream);
  if (status == cudaSuccess) {
    status = generate(factor_b(p, w.b, io.grad_b, io.grad_beta), w.scratch, sm_count, stream);
  }
  // grad_h = scaling * grad B; grad_a = grad_h^T x; A and grad_alpha in one pass over the U_i.
  if (status == cudaSuccess) {
    status = gemm(t, r, out, row_major(io.grad, p.dtype, out), row_major(w.b, Dtype::kFloat32, r), p.scaling,
                  w.grad_h, Dtype::kFloat32, w.scratch, sm_count, stream);
  }
  if (status == cudaSuccess) {
    status = gemm(r, in, t, transposed(w.grad_h, Dtype::kFloat32, r), row_major(p.x, p.dtype, in), 1.0f,
                  io.grad_a, Dtype::kFloat32, w.scratch, sm_count, stream);
  }
  if (status == cudaSuccess) {
    status = generate(factor_a(p, w.a, io.grad_a, io.grad_alpha), w.scratch, sm_count, stream);
  }
  // grad_x = grad_h A.
  if (status == cudaSuccess) {
    status = gemm(t, in, r, row_major(w.grad_h, Dtype::kFloat32, r), row_major(w.a, Dtype::kFloat32, in), 1.0f,
                  io.grad_x, p.dtype, w.scratch, sm_count, stream);
  }
  return status;
}

}  // namespace nola
