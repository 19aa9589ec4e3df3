// The torch binding: registers the kernels as the nola_kernels_cuda::* ops (visible under
// torch.ops, so torch.compile can trace them) and gives the shared library a Python module init
// so that `import nola_kernels._cuda` loads it. The autograd stays in nola_kernels/ops.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <Python.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "nola_cuda.h"

namespace {

// The contract's distribution names (nola_kernels.basis.DISTRIBUTIONS).
nola::Distribution parse_distribution(const std::string& name) {
  if (name == "uniform") return nola::Distribution::kUniform;
  if (name == "rademacher") return nola::Distribution::kRademacher;
  if (name == "uniform16_philox7") return nola::Distribution::kUniform16Philox7;
  TORCH_CHECK(name == "rademacher_philox7",
              "distribution must be 'uniform', 'rademacher', 'uniform16_philox7' or 'rademacher_philox7', got '", name,
              "'");
  return nola::Distribution::kRademacherPhilox7;
}

// The dtype of an official family's name.
std::optional<nola::OfficialDtype> official_dtype(const std::string& name) {
  if (name == "float32") return nola::OfficialDtype::kFloat32;
  if (name == "bfloat16") return nola::OfficialDtype::kBFloat16;
  if (name == "float16") return nola::OfficialDtype::kFloat16;
  return std::nullopt;
}

// The resident threads of an official family's name, written as official_distribution writes
// them (decimal, no leading zero, a multiple of 256 in [256, 2^31)); 0 for anything else.
int64_t official_threads(const std::string& text) {
  if (text.empty() || text.size() > 10 || text[0] == '0' || text.find_first_not_of("0123456789") != std::string::npos) {
    return 0;
  }
  const int64_t threads = std::stoll(text);
  return threads < (int64_t{1} << 31) && threads % nola::kOfficialBlockThreads == 0 ? threads : 0;
}

// An official CUDA layout family's name, "official:<dtype>:<rule>:<resident threads>"
// (nola_kernels.official_rng.official_distribution), read as parse_official reads it: nothing
// for a name without the "official:" prefix, an error naming `distribution` for a malformed one.
std::optional<nola::OfficialFamily> parse_official(const std::string& name, int64_t seed) {
  if (name.rfind("official:", 0) != 0) return std::nullopt;
  std::vector<std::string> parts;
  for (size_t start = 0;; ) {
    const size_t end = name.find(':', start);
    parts.push_back(name.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  const auto dtype = parts.size() == 4 ? official_dtype(parts[1]) : std::nullopt;
  const bool legacy = parts.size() == 4 && parts[2] == "legacy";
  const bool rule_known = legacy || (parts.size() == 4 && parts[2] == "current");
  const int64_t threads = parts.size() == 4 ? official_threads(parts[3]) : 0;
  TORCH_CHECK(dtype && rule_known && !(legacy && *dtype == nola::OfficialDtype::kFloat32) && threads > 0,
              "distribution '", name,
              "' is not an official family's name: expected 'official:<dtype>:<rule>:<resident threads>' with dtype "
              "float32, bfloat16 or float16, rule current or legacy (current for float32) and a multiple of 256 "
              "threads in [256, 2**31) written in decimal");
  TORCH_CHECK(seed >= 0, "seed must be non-negative, got ", seed);
  return nola::OfficialFamily{static_cast<uint64_t>(seed), static_cast<uint32_t>(threads), *dtype, legacy};
}

// The stream and the size of an official family's basis (nola_kernels.validation.check_family).
void check_official_basis(const std::string& distribution, int64_t stream, int64_t k, int64_t numel) {
  TORCH_CHECK(stream == 0, "stream must be 0 for an official family (distribution='", distribution, "'), got ",
              stream);
  TORCH_CHECK(numel == 0 || k <= (int64_t{1} << 40) / numel, "an official family's basis holds at most 2**40 "
              "entries (distribution='", distribution, "'), got k * rows * cols = ", k, " * ", numel);
}

nola::Dtype kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return nola::Dtype::kFloat32;
    case at::kHalf:
      return nola::Dtype::kFloat16;
    case at::kBFloat16:
      return nola::Dtype::kBFloat16;
    default:
      TORCH_CHECK(false, "the CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

nola::Family family(int64_t seed, int64_t stream) {
  TORCH_CHECK(seed >= 0 && stream >= 0, "seed and stream must be non-negative");
  return nola::Family::of(static_cast<uint64_t>(seed), static_cast<uint64_t>(stream));
}

// Basis indices are Philox counter word 1 (docs/spec.md): at most 2^32 basis matrices.
int64_t checked_basis_count(int64_t value, const char* name) {
  TORCH_CHECK(value >= 0 && value <= (int64_t{1} << 32), name, " must be in [0, 2^32], got ", value);
  return value;
}

// Flat positions n < 2^34 (docs/spec.md): counter word 0 is n / 4 for the uniform basis, n / 8 for uniform16.
int64_t checked_numel(int64_t rows, int64_t cols) {
  TORCH_CHECK(rows >= 0 && cols >= 0 && (cols == 0 || rows <= (int64_t{1} << 34) / cols),
              "rows and cols must be non-negative with rows * cols <= 2^34, got ", rows, " x ", cols);
  return rows * cols;
}

// The rank (an int in the kernels) and the output width: a factor with no rows is not a delta.
void check_width(int64_t value, const char* name) {
  TORCH_CHECK(value >= 1 && value <= std::numeric_limits<int>::max(), name, " must be in [1, 2^31), got ", value);
}

at::Tensor as_float32(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
  return t.to(at::kFloat).contiguous();
}

// An optional offset, checked against its factor's shape.
at::Tensor as_offset(const c10::optional<at::Tensor>& t, int64_t rows, int64_t cols, const char* name,
                     const at::Device& device) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->dim() == 2 && t->size(0) == rows && t->size(1) == cols, name, " must have shape (", rows, ", ",
              cols, "), got ", t->sizes());
  return as_float32(*t, name, device);
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

int sm_count(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device()));
  return count;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

void check(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "nola_kernels CUDA launch failed: ", cudaGetErrorString(status));
}

// One official mix or projection on like's device and stream.
void run_official(const nola::OfficialProblem& problem, const at::Tensor& like) {
  const int sms = sm_count(like);
  const at::Tensor space = workspace(nola::official_workspace_bytes(problem, sms), like);
  check(nola::official_generate(problem, space.data_ptr(), sms, current_stream()));
}

at::Tensor mix(const at::Tensor& coeffs_in, int64_t seed, int64_t stream, int64_t rows, int64_t cols, double scale,
               const std::string& distribution) {
  const c10::cuda::CUDAGuard guard(coeffs_in.device());
  const at::Tensor coeffs = coeffs_in.to(at::kFloat).contiguous();
  const int64_t numel = checked_numel(rows, cols);
  const auto official = parse_official(distribution, seed);
  if (official) check_official_basis(distribution, stream, coeffs.numel(), numel);
  at::Tensor out = at::empty({rows, cols}, coeffs.options());
  if (official) {
    const nola::OfficialProblem problem{*official, numel, coeffs.numel(), static_cast<float>(scale),
                                        coeffs.data_ptr<float>(), out.data_ptr<float>(), nullptr, nullptr};
    run_official(problem, coeffs);
    return out;
  }
  const nola::GenerateProblem problem{family(seed, stream), parse_distribution(distribution), numel,
                                      checked_basis_count(coeffs.numel(), "k"), static_cast<float>(scale),
                                      coeffs.data_ptr<float>(), nullptr, out.data_ptr<float>(), nullptr, nullptr};
  const int sms = sm_count(coeffs);
  const at::Tensor space = workspace(
      nola::generate_workspace_bytes(problem.distribution, problem.numel, problem.k, true, false, sms), coeffs);
  check(nola::generate(problem, space.data_ptr(), sms, current_stream()));
  return out;
}

at::Tensor project(const at::Tensor& grad_in, int64_t seed, int64_t stream, int64_t k, double scale,
                   const std::string& distribution) {
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const at::Tensor grad = grad_in.to(at::kFloat).contiguous();
  const auto official = parse_official(distribution, seed);
  if (official) check_official_basis(distribution, stream, k, grad.numel());
  at::Tensor out = at::empty({checked_basis_count(k, "k")}, grad.options());
  if (official) {
    const nola::OfficialProblem problem{*official, checked_numel(grad.numel(), 1), k, static_cast<float>(scale),
                                        nullptr, nullptr, grad.data_ptr<float>(), out.data_ptr<float>()};
    run_official(problem, grad);
    return out;
  }
  const nola::GenerateProblem problem{family(seed, stream), parse_distribution(distribution),
                                      checked_numel(grad.numel(), 1), k, static_cast<float>(scale), nullptr,
                                      nullptr, nullptr, grad.data_ptr<float>(), out.data_ptr<float>()};
  const int sms = sm_count(grad);
  const at::Tensor space = workspace(
      nola::generate_workspace_bytes(problem.distribution, problem.numel, problem.k, false, true, sms), grad);
  check(nola::generate(problem, space.data_ptr(), sms, current_stream()));
  return out;
}

// The grouped launch of `problem` (a nola::GroupedProblem or nola::OfficialGroupedProblem) on like's
// device and stream: into out (G, rows, cols) from coeffs (G, k).
template <typename Problem>
void run_mix_grouped(const Problem& problem, const at::Tensor& coeffs, at::Tensor& out) {
  const int sms = sm_count(coeffs);
  const at::Tensor space = workspace(nola::mix_grouped_workspace_bytes(problem, sms), coeffs);
  check(nola::mix_grouped(problem, coeffs.data_ptr<float>(), out.data_ptr<float>(), space.data_ptr(), sms,
                          current_stream()));
}

// Into out (G, k) from grads (G, rows, cols).
template <typename Problem>
void run_project_grouped(const Problem& problem, const at::Tensor& grads, at::Tensor& out) {
  const int sms = sm_count(grads);
  const at::Tensor space = workspace(nola::project_grouped_workspace_bytes(problem, sms), grads);
  check(nola::project_grouped(problem, grads.data_ptr<float>(), out.data_ptr<float>(), space.data_ptr(), sms,
                              current_stream()));
}

// coeffs (G, k) -> (G, rows, cols): every row mixed from the one family.
at::Tensor mix_grouped(const at::Tensor& coeffs_in, int64_t seed, int64_t stream, int64_t rows, int64_t cols,
                       double scale, const std::string& distribution) {
  const c10::cuda::CUDAGuard guard(coeffs_in.device());
  TORCH_CHECK(coeffs_in.dim() == 2, "coeffs must be 2-D (G, k), got ", coeffs_in.sizes());
  const at::Tensor coeffs = coeffs_in.to(at::kFloat).contiguous();
  const int64_t groups = coeffs.size(0), numel = checked_numel(rows, cols);
  const auto official = parse_official(distribution, seed);
  if (official) check_official_basis(distribution, stream, coeffs.size(1), numel);
  const int64_t k = checked_basis_count(coeffs.size(1), "k");
  at::Tensor out = at::empty({groups, rows, cols}, coeffs.options());
  if (official) {
    run_mix_grouped(nola::OfficialGroupedProblem{*official, groups, numel, k, static_cast<float>(scale)}, coeffs, out);
  } else {
    run_mix_grouped(nola::GroupedProblem{family(seed, stream), parse_distribution(distribution), groups, numel, k,
                                         static_cast<float>(scale)},
                    coeffs, out);
  }
  return out;
}

// grads (G, rows, cols) -> (G, k): every row projected on the one family.
at::Tensor project_grouped(const at::Tensor& grads_in, int64_t seed, int64_t stream, int64_t k, double scale,
                           const std::string& distribution) {
  const c10::cuda::CUDAGuard guard(grads_in.device());
  TORCH_CHECK(grads_in.dim() == 3, "grads must be 3-D (G, rows, cols), got ", grads_in.sizes());
  const at::Tensor grads = grads_in.to(at::kFloat).contiguous();
  const int64_t groups = grads.size(0), numel = checked_numel(grads.size(1), grads.size(2));
  const auto official = parse_official(distribution, seed);
  if (official) check_official_basis(distribution, stream, k, numel);
  at::Tensor out = at::empty({groups, checked_basis_count(k, "k")}, grads.options());
  if (official) {
    run_project_grouped(nola::OfficialGroupedProblem{*official, groups, numel, k, static_cast<float>(scale)}, grads,
                        out);
  } else {
    run_project_grouped(nola::GroupedProblem{family(seed, stream), parse_distribution(distribution), groups, numel, k,
                                             static_cast<float>(scale)},
                        grads, out);
  }
  return out;
}

// The tensors of one low-rank call, converted once, and the kernels' view of them.
struct LowRankInputs {
  at::Tensor x, alpha, beta, a0, b0;
  nola::LowRankProblem problem;
};

LowRankInputs lowrank_inputs(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& beta,
                             const c10::optional<at::Tensor>& a0, const c10::optional<at::Tensor>& b0,
                             int64_t seed_a, int64_t seed_b, int64_t rank, int64_t out_features, double scaling,
                             const std::string& distribution) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "x must be a 2-D CUDA tensor (tokens, in_features)");
  check_width(rank, "rank");
  check_width(out_features, "out_features");
  LowRankInputs in;
  in.x = x.contiguous();
  in.alpha = as_float32(alpha, "alpha", x.device());
  in.beta = as_float32(beta, "beta", x.device());
  in.a0 = as_offset(a0, rank, x.size(1), "a0", x.device());
  in.b0 = as_offset(b0, out_features, rank, "b0", x.device());
  in.problem = nola::LowRankProblem{x.size(0), x.size(1), out_features, static_cast<int>(rank),
                                    checked_basis_count(in.alpha.numel(), "k"),
                                    checked_basis_count(in.beta.numel(), "l"),
                                    kernel_dtype(x), family(seed_a, 0), family(seed_b, 0),
                                    parse_distribution(distribution), static_cast<float>(scaling), in.x.data_ptr(),
                                    in.alpha.data_ptr<float>(), in.beta.data_ptr<float>(), data_or_null(in.a0),
                                    data_or_null(in.b0)};
  return in;
}

std::tuple<at::Tensor, at::Tensor> lowrank_forward(const at::Tensor& x, const at::Tensor& alpha,
                                                   const at::Tensor& beta, const c10::optional<at::Tensor>& a0,
                                                   const c10::optional<at::Tensor>& b0, int64_t seed_a,
                                                   int64_t seed_b, int64_t rank, int64_t out_features,
                                                   double scaling, const std::string& distribution) {
  const c10::cuda::CUDAGuard guard(x.device());
  const LowRankInputs in =
      lowrank_inputs(x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution);
  at::Tensor delta = at::empty({x.size(0), out_features}, in.x.options());
  at::Tensor h = at::empty({x.size(0), rank}, in.x.options().dtype(at::kFloat));
  const int sms = sm_count(x);
  const at::Tensor space = workspace(nola::lowrank_workspace_bytes(in.problem, sms), x);
  check(nola::lowrank_forward(in.problem, nola::LowRankForward{delta.data_ptr(), h.data_ptr<float>()},
                              space.data_ptr(), sms, current_stream()));
  return {delta, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lowrank_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& h, const at::Tensor& alpha,
    const at::Tensor& beta, const c10::optional<at::Tensor>& a0, const c10::optional<at::Tensor>& b0,
    int64_t seed_a, int64_t seed_b, int64_t rank, int64_t out_features, double scaling,
    const std::string& distribution) {
  const c10::cuda::CUDAGuard guard(x.device());
  const LowRankInputs in =
      lowrank_inputs(x, alpha, beta, a0, b0, seed_a, seed_b, rank, out_features, scaling, distribution);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({x.size(0), out_features}), "grad must have shape (tokens, ",
              out_features, "), got ", grad.sizes());
  TORCH_CHECK(h.sizes() == at::IntArrayRef({x.size(0), rank}), "h must have shape (tokens, ", rank, ")");
  TORCH_CHECK(grad.device() == x.device(), "grad must be on ", x.device(), ", got ", grad.device());
  const at::Tensor grad_c = grad.to(x.scalar_type()).contiguous();
  const at::Tensor h_c = as_float32(h, "h", x.device());
  const auto f32 = in.x.options().dtype(at::kFloat);
  at::Tensor grad_x = at::empty_like(in.x);
  at::Tensor grad_alpha = at::empty({in.problem.k}, f32), grad_beta = at::empty({in.problem.l}, f32);
  at::Tensor grad_a = at::empty({rank, x.size(1)}, f32), grad_b = at::empty({out_features, rank}, f32);
  const int sms = sm_count(x);
  const at::Tensor space = workspace(nola::lowrank_workspace_bytes(in.problem, sms), x);
  const nola::LowRankBackward io{grad_c.data_ptr(),           h_c.data_ptr<float>(),
                                 grad_x.data_ptr(),           grad_alpha.data_ptr<float>(),
                                 grad_beta.data_ptr<float>(), grad_a.data_ptr<float>(),
                                 grad_b.data_ptr<float>()};
  check(nola::lowrank_backward(in.problem, io, space.data_ptr(), sms, current_stream()));
  return {grad_x, grad_alpha, grad_beta, grad_a, grad_b};
}

// One float per block of the Philox-only kernel; the benchmark times it against the mix kernel.
at::Tensor philox_rate(const at::Tensor& like, int64_t calls, int64_t seed) {
  const c10::cuda::CUDAGuard guard(like.device());
  TORCH_CHECK(like.is_cuda(), "philox_rate runs on a CUDA device");
  const int sms = sm_count(like);
  at::Tensor sums = at::empty({nola::rate_blocks(sms)}, like.options().dtype(at::kFloat));
  check(nola::philox_rate(family(seed, 0), calls, sums.data_ptr<float>(), sms, current_stream()));
  return sums;
}

}  // namespace

TORCH_LIBRARY(nola_kernels_cuda, m) {
  m.def("mix(Tensor coeffs, int seed, int stream, int rows, int cols, float scale, str distribution) -> Tensor");
  m.def("project(Tensor grad, int seed, int stream, int k, float scale, str distribution) -> Tensor");
  m.def(
      "mix_grouped(Tensor coeffs, int seed, int stream, int rows, int cols, float scale, str distribution) "
      "-> Tensor");
  m.def("project_grouped(Tensor grads, int seed, int stream, int k, float scale, str distribution) -> Tensor");
  m.def(
      "lowrank_forward(Tensor x, Tensor alpha, Tensor beta, Tensor? a0, Tensor? b0, int seed_a, int seed_b, "
      "int rank, int out_features, float scaling, str distribution) -> (Tensor, Tensor)");
  m.def(
      "lowrank_backward(Tensor grad, Tensor x, Tensor h, Tensor alpha, Tensor beta, Tensor? a0, Tensor? b0, "
      "int seed_a, int seed_b, int rank, int out_features, float scaling, str distribution) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("philox_rate(Tensor like, int calls, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(nola_kernels_cuda, CUDA, m) {
  m.impl("mix", &mix);
  m.impl("project", &project);
  m.impl("mix_grouped", &mix_grouped);
  m.impl("project_grouped", &project_grouped);
  m.impl("lowrank_forward", &lowrank_forward);
  m.impl("lowrank_backward", &lowrank_backward);
  m.impl("philox_rate", &philox_rate);
}

// A module with no Python functions: importing it runs the registrations above.
PyMODINIT_FUNC PyInit__cuda() {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cuda",
                               "nola_kernels CUDA ops (torch.ops.nola_kernels_cuda)", -1, nullptr};
  return PyModule_Create(&module);
}
